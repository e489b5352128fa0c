"""Write the built-in IFEval pack: each IFEval instruction below x five everyday queries (120 cases).

The pack file ifeval.yaml is checked in; this table is its source. Regenerate after editing:
``python -m shared.evaluation.packs.make_ifeval > shared/evaluation/packs/ifeval.yaml`` (a test keeps
the two in step). Instructions are written as system-prompt rules a small model could follow, and
kwargs are fixed, so the pack is the same on every run.
"""

from __future__ import annotations

import sys

from shared import yamlsafe
from shared.evaluation.checks import IFEVAL_BY_ID

QUERIES = (
    ("paris", "Tell me about the city of Paris."),
    ("photosynthesis", "How does photosynthesis work?"),
    ("sleep", "Why is sleep important for health?"),
    ("coffee", "How do I make a good cup of coffee?"),
    ("dog", "What should I know before adopting a dog?"),
    ("exercise", "What are the benefits of regular exercise?"),
    ("rain", "Why does it rain?"),
    ("groceries", "How can I save money on groceries?"),
    ("moon", "Why does the Moon have phases?"),
    ("landlord", "How do I ask my landlord to fix a broken heater?"),
    ("bread", "How is bread made?"),
    ("volcano", "What makes a volcano erupt?"),
    ("interview", "How should I prepare for a job interview?"),
    ("recycling", "Why is recycling useful?"),
    ("chess", "How do you play chess?"),
    ("tea", "What is the difference between green tea and black tea?"),
    ("bicycle", "How do I fix a flat bicycle tire?"),
    ("internet", "How does the internet work?"),
    ("garden", "How do I start a small vegetable garden?"),
    ("stars", "Why do stars twinkle?"),
    ("exam", "What is a good way to study for an exam?"),
    ("ocean", "Why is the ocean salty?"),
    ("party", "Suggest a fun birthday party idea for a ten-year-old."),
    ("mountains", "What should I pack for a weekend trip to the mountains?"),
)
YES_NO_QUERIES = (
    ("tomato", "Is a tomato a fruit?"),
    ("penguins", "Can penguins fly?"),
    ("sun", "Is it safe to look directly at the Sun?"),
    ("fish", "Do fish sleep?"),
    ("water", "Should I drink water every day?"),
)
QUERY = "{query}"  # a kwarg value filled with the case's query

# (key, IFEval id, kwargs, instruction)
INSTRUCTIONS = (
    ("lowercase", "change_case:english_lowercase", {},
     "Write your whole answer in English using only lowercase letters. Do not use any capital letters."),
    ("capitals", "change_case:english_capital", {}, "Write your whole answer in English using only CAPITAL LETTERS."),
    ("no_comma", "punctuation:no_comma", {}, "Do not use any commas in your answer."),
    ("end_phrase", "startend:end_checker", {"end_phrase": "Is there anything else I can help with?"},
     'Always finish your answer with the exact sentence "Is there anything else I can help with?" and write '
     'nothing after it.'),
    ("three_bullets", "detectable_format:number_bullet_lists", {"num_bullets": 3},
     'Answer with exactly 3 bullet points, each on its own line starting with "* ".'),
    ("json", "detectable_format:json_format", {}, "Format your entire answer as valid JSON."),
    ("under_50_words", "length_constraints:number_words", {"num_words": 50, "relation": "less than"},
     "Answer in fewer than 50 words."),
    ("two_sentences", "length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"},
     "Answer in at most 2 sentences."),
    ("keywords", "keywords:existence", {"keywords": ["simple", "example"]},
     'Include the words "simple" and "example" in your answer.'),
    ("no_and", "keywords:forbidden_words", {"forbidden_words": ["and"]}, 'Never use the word "and" in your answer.'),
    ("indeed_twice", "keywords:frequency", {"keyword": "indeed", "frequency": 2, "relation": "at least"},
     'Use the word "indeed" at least twice in your answer.'),
    ("quotation", "startend:quotation", {}, "Wrap your entire answer in double quotation marks."),
    ("title", "detectable_format:title", {},
     "Start your answer with a title wrapped in double angular brackets, such as <<My Title>>."),
    ("postscript", "detectable_content:postscript", {"postscript_marker": "P.S."},
     'At the end of your answer, add a postscript that starts with "P.S."'),
    ("french", "language:response_language", {"language": "fr"},
     "Answer only in French, whatever language the user writes in."),
    ("spanish", "language:response_language", {"language": "es"},
     "Answer only in Spanish, whatever language the user writes in."),
    ("german", "language:response_language", {"language": "de"},
     "Answer only in German, whatever language the user writes in."),
    ("highlights", "detectable_format:number_highlighted_sections", {"num_highlights": 2},
     "Highlight at least 2 parts of your answer with markdown asterisks, like *this part*."),
    ("placeholders", "detectable_content:number_placeholders", {"num_placeholders": 2},
     "Include at least 2 placeholders in square brackets, such as [name] and [date]."),
    ("two_sections", "detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 2},
     "Split your answer into 2 sections that start with SECTION 1 and SECTION 2."),
    ("capital_words", "change_case:capital_word_frequency", {"capital_frequency": 3, "capital_relation": "at least"},
     "Stress at least 3 key words by writing them in ALL CAPITAL LETTERS."),
    ("repeat_request", "combination:repeat_prompt", {"prompt_to_repeat": QUERY},
     "First repeat the user's request word for word, then give your answer."),
    ("two_paragraphs", "length_constraints:number_paragraphs", {"num_paragraphs": 2},
     "Write exactly 2 paragraphs and separate them with the markdown divider ***."),
    ("yes_no", "detectable_format:constrained_response", {},
     'Answer only with one of these sentences: "My answer is yes.", "My answer is no." or "My answer is maybe."'),
)
PER_INSTRUCTION = 5


def build() -> list[dict]:
    """Return the pack's cases: instruction i takes queries 5i .. 5i+4 (mod 24), so each query is used 5 times."""
    cases = []
    for i, (key, ifeval_id, kwargs, instruction) in enumerate(INSTRUCTIONS):
        spec = IFEVAL_BY_ID[ifeval_id]
        pool = YES_NO_QUERIES if key == "yes_no" else QUERIES
        for j in range(PER_INSTRUCTION):
            qkey, query = pool[(i * PER_INSTRUCTION + j) % len(pool)]
            args = {k: (query if v == QUERY else v) for k, v in kwargs.items()}
            entry = {"id": ifeval_id, "kwargs": args} if args else ifeval_id
            cases.append({"name": f"{key}-{qkey}", "description": f"IFEval {ifeval_id}: {spec.description}",
                          "instruction": instruction, "query": query, "ifeval": [entry]})
    return cases


def render() -> str:
    """Return ifeval.yaml's text."""
    head = ("# Built-in IFEval pack: generated by `python -m shared.evaluation.packs.make_ifeval`; edit the table\n"
            "# there, not this file. Each case's instruction goes in the system turn; ifeval names the verifier.\n")
    body = yamlsafe.safe_dump({"name": "ifeval", "description": "IFEval instruction classes x everyday queries.",
                           "cases": build()}, sort_keys=False, allow_unicode=True, width=120)
    return head + body


if __name__ == "__main__":
    sys.stdout.write(render())
