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
