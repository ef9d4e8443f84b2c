"""How each constraint kind is asked: several phrasings per kind, written differently (a rule, a
budget, a reader's need, a format sketch ...), so that an eval on held-out phrasings measures
instruction following rather than template recall. Phrasing 0 of the original fifteen kinds is the
sentence prompts used before phrasings existed, so stored constraints without a phrasing id still
describe themselves the same way.

Templates are str.format strings over the constraint's parameters; list parameters arrive
pre-rendered as {words} ('"a", "b" and "c"') and {keys} ('"a", "b"').
"""
from __future__ import annotations

TITLE_EXAMPLES = frozenset({"poem of joy", "a quiet harbour", "title here", "your title"})

PHRASINGS: dict[str, tuple[str, ...]] = {
    "max_words": (
        "Answer in at most {n} words.",
        "Keep it brief: your whole reply may use no more than {n} words.",
        "Word budget: {n}. Going over it, even by one word, counts as a failure.",
        "Imagine the reader only has time for {n} words or fewer; write for that reader.",
    ),
    "min_words": (
        "Answer with at least {n} words.",
        "Give a thorough reply that runs to {n} words or more.",
        "Anything shorter than {n} words will be rejected, so develop your answer fully.",
        "Write a detailed response: aim for a length of no fewer than {n} words.",
    ),
    "max_sentences": (
        "Answer in at most {n} sentences.",
        "Use no more than {n} sentences in total.",
        "Limit yourself to {n} sentences or fewer; every extra sentence breaks the rule.",
        "Be concise enough that your answer fits in {n} sentences at most.",
    ),
    "min_sentences": (
        "Write at least {n} full sentences.",
        "Your answer needs {n} or more complete sentences.",
        "Do not stop before you have written {n} sentences.",
    ),
    "exact_sentences": (
        "Answer in exactly {n} sentences.",
        "Your reply must consist of {n} sentences, no more and no fewer.",
        "Write precisely {n} complete sentences; the count will be checked.",
        "I need an answer that is exactly {n} sentences long.",
    ),
    "paragraphs": (
        "Your response must have exactly {n} paragraphs, separated by a blank line.",
        "Organise the answer into {n} paragraphs, with an empty line between consecutive paragraphs.",
        "Write {n} paragraphs. Put one blank line between paragraphs and do not add any extra ones.",
        "Structure: exactly {n} blocks of prose, each block separated from the next by a blank line.",
    ),
    "paragraphs_divider": (
        "There should be {n} paragraphs. Paragraphs are separated with the markdown divider: ***",
        "Split your answer into exactly {n} parts and put a line containing only *** between parts.",
        "Write {n} paragraphs, using a line of three asterisks (***) as the separator between them.",
    ),
    "include_keywords": (
        "Include the keywords {words} in your response.",
        "Make sure the words {words} each appear somewhere in what you write.",
        "Your answer will be searched for {words}; every one of them must be there.",
        "Work the following terms naturally into the reply: {words}.",
    ),
    "forbidden_words": (
        "Do not use the words {words} anywhere in your response.",
        "Avoid these words completely: {words}.",
        "The words {words} are banned; an answer containing any of them fails.",
        "Write the reply without ever using {words}.",
    ),
    "keyword_frequency": (
        "Use the word \"{word}\" at least {n} times.",
        "The word \"{word}\" should appear {n} or more times in your answer.",
        "Mention \"{word}\" repeatedly: no fewer than {n} occurrences.",
    ),
    "letter_frequency": (
        "In your response, the letter {letter} should appear at least {n} times.",
        "Make sure the letter \"{letter}\" occurs {n} or more times in your reply.",
        "Your text must contain the letter {letter} no fewer than {n} times.",
    ),
    "lowercase": (
        "Your entire response must be in lowercase letters. No capital letters are allowed.",
        "Write everything in lower case, including the first word of each sentence.",
        "Do not use a single uppercase letter anywhere in the reply.",
        "Style rule: all lowercase, like a casual text message.",
    ),
    "uppercase": (
        "Your entire response must be in English, in capital letters only.",
        "Write the whole answer in CAPITAL LETTERS.",
        "Every letter of your reply has to be uppercase; no lowercase letters at all.",
        "Respond as if your caps lock key were stuck on: everything in upper case.",
    ),
    "capital_word_frequency": (
        "Use at least {n} words written in all capital letters to stress key points.",
        "Put {n} or more words in ALL CAPS for emphasis.",
        "Include no fewer than {n} fully capitalised words, such as IMPORTANT.",
    ),
    "no_commas": (
        "Do not use any commas in your response.",
        "Write the answer without a single comma.",
        "Commas are not allowed anywhere in your reply.",
        "Use full stops and other punctuation if you like, but never a comma.",
    ),
    "start_with": (
        "Start your response with the exact phrase \"{phrase}\".",
        "Your first words must be \"{phrase}\".",
        "Begin the answer with \"{phrase}\" and then continue naturally.",
        "Open with these exact words: {phrase}",
    ),
    "end_with": (
        "Finish your response with the exact phrase \"{phrase}\". No other words should follow it.",
        "The last words of your answer must be \"{phrase}\".",
        "Close with \"{phrase}\" and write nothing after it.",
        "End the reply with this exact phrase: {phrase}",
    ),
    "wrap_in_quotes": (
        "Wrap your entire response with double quotation marks.",
        "Put the whole answer inside a pair of double quotes.",
        "Your reply must begin and end with a double quotation mark (\").",
    ),
    "postscript": (
        "At the end of your response, please explicitly add a postscript starting with {marker}",
        "Add a short postscript after the main answer; begin it with \"{marker}\".",
        "Finish with a separate line that starts with {marker} and adds one extra thought.",
        "After answering, append a note that opens with the marker {marker}",
    ),
    "placeholders": (
        "The response must contain at least {n} placeholders represented by square brackets, such as [address].",
        "Leave {n} or more fill-in-the-blank spots written in square brackets, like [name].",
        "Include no fewer than {n} bracketed placeholders, for example [date], for details to fill in later.",
    ),
    "bullet_points": (
        "Your answer must contain exactly {n} bullet points, using markdown bullets such as:\n* This is a point.",
        "Give your answer as a list of exactly {n} markdown bullet points.",
        "Use {n} bullets, no more and no fewer; start each one with \"* \".",
        "Present it as {n} list items, each on its own line beginning with a dash (-).",
    ),
    "numbered_list": (
        "Answer with a numbered list of exactly {n} items (1., 2., ...).",
        "Give {n} numbered points, numbered from 1 to {n}.",
        "Format the reply as a list numbered 1. to {n}. with one item per line.",
        "I want exactly {n} steps, each on its own line starting with its number and a full stop.",
    ),
    "highlights": (
        "Highlight at least {n} sections in your answer with markdown, i.e. *highlighted section*.",
        "Mark {n} or more key phrases with asterisks, like *this phrase*.",
        "Emphasise at least {n} parts of the text using markdown italics or bold.",
    ),
    "sections": (
        "Your response must have {n} sections. Mark the beginning of each section with {marker} X, such as {marker} 1.",
        "Divide the answer into exactly {n} sections headed {marker} 1, {marker} 2 and so on.",
        "Write {n} sections; start each one with a line \"{marker} <number>\".",
    ),
    "title": (
        "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>.",
        "Give your answer a title and put it between << and >>.",
        "Start with a title of your own in double angle brackets, for example <<a quiet harbour>>.",
        "Include a heading written as <<your title>>, replacing the words with a real title.",
    ),
    "json_format": (
        "Your entire output must be a JSON object; you may wrap it in a ```json code block.",
        "Reply with a JSON object only, no text before or after it.",
        "Format the whole answer as JSON: one object whose values hold your content.",
        "Return machine-readable output: a single JSON object, optionally fenced as ```json.",
    ),
    "json_keys": (
        "Answer with a JSON object that has the keys {keys}.",
        "Return only JSON: an object containing the fields {keys}, each filled in.",
        "Wrap your entire output in JSON; the object must include {keys}.",
    ),
    "two_responses": (
        "Give two different responses. Responses and only responses should be separated by 6 asterisk symbols: ******.",
        "Write two alternative answers and put a line of six asterisks (******) between them.",
        "Offer two distinct versions of the answer, separated by ******, and nothing else.",
        "Provide a first answer, then ******, then a second, different answer.",
    ),
    "repeat_request": (
        "First repeat the request above word for word without change (not these instructions), then give your answer.",
        "Before answering, copy the request above exactly as written, leaving out these instructions; then respond to it.",
        "Begin by restating the request verbatim (only the request, not this sentence), and after that write your answer.",
    ),
}
