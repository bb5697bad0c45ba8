import math

from thrifty.router.features import NAMES, feature_matrix, prompt_features

MCQ = "Which planet is largest?\nA. Mercury\nB. Jupiter\nC. Mars\nD. Venus\nAnswer:"


def test_option_features_measure_options_and_stem():
    f = dict(zip(NAMES, prompt_features(MCQ)))
    stem = MCQ.index("A.")
    options = MCQ[stem: MCQ.index("\nAnswer:")]
    assert f["log_stem_chars"] == math.log1p(stem)
    assert f["log_option_chars"] == math.log1p(len(options) / 4)


def test_prompts_without_options_have_zero_option_length():
    text = "Janet has 3 apples and buys 5 more. How many apples does she have?"
    f = dict(zip(NAMES, prompt_features(text)))
    assert f["log_option_chars"] == 0.0 and f["log_stem_chars"] == math.log1p(len(text))
    assert feature_matrix([text, MCQ]).shape == (2, len(NAMES))


def test_fast_wordpiece_ids_equal_the_tokenizers_library():
    from pathlib import Path

    from thrifty.router import data
    from thrifty.router.embed import VOCAB_PATH, WordPieceIds, _tokenizer

    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "routing"
    d = data.load([fixtures])
    edge = ["a" + chr(c) + "b c" + chr(c) for c in range(128)]  # every ASCII character as a separator
    edge += ["x" * 100, "x" * 101, "zzqxjv", "Café déjà-vu 中文", "", "   ", "e=mc^2; f(x)={x|x>0}"]
    reference = _tokenizer()
    fast = WordPieceIds(VOCAB_PATH.read_text(encoding="utf-8").splitlines(), _tokenizer())
    for text in d.prompts + [p.upper() for p in d.prompts[:200]] + edge:
        assert fast(text) == reference.encode(text, add_special_tokens=False).ids, repr(text[:80])


def test_code_marker_count_is_unchanged_by_the_faster_pattern():
    import re

    from thrifty.router.features import _CODE

    original = re.compile(r"```|\bdef |\bclass |\breturn\b|[{};]\s*$|\bimport ", re.MULTILINE)
    samples = ["def f(x):\n    return x;\n}\n", "```py\nimport os\nclass A: pass\n```", "classic deface; {",
               "import\treturn returned ;  \n\n{ }", "no code here", "x = {a: 1};"]
    for text in samples:
        assert len(_CODE.findall(text)) == len(original.findall(text)), text
