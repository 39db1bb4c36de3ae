"""Build the prompt set the confidence head of the embedded default is trained on
(recipes/train_confidence_smollm2.yaml), deterministically and offline.

Why a set of its own: the head must learn how often the *shipped* drafter's drafts are accepted on
text it has not been trained on. On its own training prompts the drafter accepts far more (position-1
acceptance 0.41 there vs 0.26 held out, docs/results.md), and a head fitted there is overconfident
on held-out prompts (measured: held-out accuracy 0.56 vs 0.72 for "always reject"). So these prompts
use topics and task templates that appear in neither the drafter's training set
(scripts/build_train_prompts.py) nor the benchmarks (MT-Bench, HumanEval);
tests/test_embedded_default.py checks both.

    python scripts/build_calibration_prompts.py > recipes/data/smollm2_calibration.jsonl
"""

import json
import random

TOPICS = """submarines; fireflies; snow leopards; the history of maps; paper money; hot air balloons;
sourdough starters; the human skeleton; lightning; bamboo; the invention of the telephone; glassblowing;
migratory birds; crystals; traffic lights; the postal service; mushrooms; the Arctic; solar eclipses;
wind instruments; sand dunes; ant colonies; the first airplanes; museums; octopuses; clocks; salt;
the violin; thunderstorms; the Sahara; sign language; windmills; comets; rivers in cities; kites;
fermentation; tree rings; the ballet; deep sea vents; trains in the 1800s""".split(";")

TEMPLATES = [
    "Tell me something surprising about {t}.", "How would you teach a beginner about {t}?",
    "Write a limerick about {t}.", "What would the world look like without {t}?",
    "Give me a two-sentence summary of {t}.", "Pretend you are a tour guide and describe {t}.",
    "What is one open question researchers still have about {t}?",
]


def main() -> None:
    rng = random.Random(15)
    prompts = [tpl.format(t=t.strip()) for t in TOPICS for tpl in TEMPLATES]
    rng.shuffle(prompts)
    for p in prompts[:160]:
        print(json.dumps({"prompt": p}))


if __name__ == "__main__":
    main()
