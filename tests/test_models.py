import pytest

from rlstack import models


def test_random_presets_use_the_smollm2_tokenizer():
    model = models.load_model("random:tiny", seed=0)
    tokenizer = models.load_tokenizer("random:tiny")
    assert model.config.vocab_size == len(tokenizer) == 49152
    assert tokenizer.eos_token == "<|im_end|>"


def test_random_weights_depend_only_on_the_seed():
    a, b, c = (models.fingerprint(models.load_model("random:tiny", seed=s)) for s in (0, 0, 1))
    assert a == b
    assert a != c


@pytest.mark.parametrize(
    ("path", "message"),
    [("random:huge", "unknown random preset"), ("/no/such/dir", "no config.json")],
)
def test_bad_model_path_names_the_key(path, message):
    with pytest.raises(ValueError, match="model.path") as info:
        models.check_source(path)
    assert message in str(info.value)


def test_local_directory_round_trips(tmp_path):
    model = models.load_model("random:tiny", seed=3)
    model.save_pretrained(tmp_path)
    assert models.fingerprint(models.load_model(str(tmp_path))) == models.fingerprint(model)
