#!/usr/bin/env python3
"""Writes tests/fixtures/text_metrics_reference.jsonl: what the Python
packages behind ParallelBench's summary and paraphrase metrics give, for
pdbench's tests/text_metrics.rs to compare against.

- porter: nltk.stem.porter.PorterStemmer() (NLTK_EXTENSIONS) on words;
- rouge: rouge_score.RougeScorer(['rouge1','rouge2','rougeL'], use_stemmer=True),
  as `evaluate`'s `rouge` calls it;
- bleu: sacrebleu BLEU(tokenize='13a', smooth_method='none',
  effective_order=False), which equals `evaluate`'s `bleu` (13a tokens,
  4-grams, no smoothing) on one sentence.

Cases come from the released ParallelBench samsum and paraphrase rows plus
hand-made edge cases.

usage (packages fetched with `pip download --no-deps`: nltk rouge_score
sacrebleu regex click joblib tqdm absl-py six numpy portalocker tabulate
colorama lxml):
  python3 scripts/text_metrics_reference.py [PARALLELBENCH_DIR]
"""
import json, os, re, sys

from nltk.stem import porter
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

root = sys.argv[1] if len(sys.argv) > 1 else "../shared/parallelbench"
here = os.path.dirname(os.path.abspath(__file__))
out = os.path.join(here, "..", "tests", "fixtures", "text_metrics_reference.jsonl")

rows = lambda f: [json.loads(l) for l in open(os.path.join(root, "paraphrase_summarize", f))]
samsum = rows("samsum.jsonl")
para = rows("chatgpt-paraphrases.jsonl")

stemmer = porter.PorterStemmer()
scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
bleu = BLEU(tokenize="13a", smooth_method="none", effective_order=False)

words = set()
for r in samsum:
    words.update(re.findall(r"[a-z0-9]+", (r["input"]["text"] + " " + r["answer"]["summary"]).lower()))
for r in para:
    words.update(re.findall(r"[a-z0-9]+", (r["input"]["text"] + " " + r["answer"]["examples"]).lower()))
words.update("""caresses ponies ties caress cats feed agreed plastered bled motoring sing
conflated troubled sized hopping tanned falling hissing fizzed failing filing happy sky
relational conditional rational valenci hesitanci digitizer conformabli radicalli
differentli vileli analogousli vietnamization predication operator feudalism
decisiveness hopefulness callousness formaliti sensitiviti sensibiliti triplicate
formative formalize electriciti electrical hopeful goodness revival allowance
inference airliner gyroscopic adjustable defensible irritant replacement adjustment
dependent adoption homologou communism activate angulariti homologous effective
bowdlerize probate rate cease controlling roll generously dying lying tying innings
outings cannings howe proceed exceed succeed skies news syzygy yyyy toy boyish
flies died tied cried spied lied archaeology analogies fully generalli
""".split())

cases = []
for w in sorted(words):
    cases.append({"kind": "porter", "word": w, "stem": stemmer.stem(w)})

def rouge_case(pred, ref):
    s = scorer.score(ref, pred)
    cases.append({"kind": "rouge", "prediction": pred, "reference": ref,
                  **{k: [v.precision, v.recall, v.fmeasure] for k, v in s.items()}})

def bleu_case(pred, ref):
    cases.append({"kind": "bleu", "prediction": pred, "reference": ref,
                  "bleu": bleu.corpus_score([pred], [[ref]]).score / 100.0})

for i, r in enumerate(samsum):
    summ = r["answer"]["summary"]
    # Predictions of varied quality: the reference itself, another row's
    # summary, the dialogue's first line, and a reordering.
    rouge_case(summ, summ)
    rouge_case(samsum[(i + 1) % len(samsum)]["answer"]["summary"], summ)
    rouge_case(r["input"]["text"].split("\n")[0], summ)
    rouge_case(" ".join(reversed(summ.split())), summ)
for r in para:
    src = r["input"]["text"]
    for ex in eval(r["answer"]["examples"])[:3]:
        bleu_case(ex, src)
    bleu_case(src, src)
    bleu_case(src + " " + src, src)
for pred, ref in [("", "a b"), ("a b", ""), ("", ""), ("Ünïcödé — naïve café!", "naive cafe"),
                  ("x", "x"), ("3.5 dollars, 4-5 items.", "3.5 dollars and 4-5 items"),
                  ("He said \"hi\" & left; <ok>", "he said hi and left"),
                  ("line one\nline two-\nthree", "line one line twothree")]:
    rouge_case(pred, ref)
    bleu_case(pred, ref)

with open(out, "w") as f:
    for c in cases:
        f.write(json.dumps(c, ensure_ascii=False) + "\n")
print(f"wrote {len(cases)} cases to {os.path.relpath(out)}")
