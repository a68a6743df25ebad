import sys

import pytest

from reward.loader import instantiate, resolve
from reward.registry import BUILTINS, ENTRY_POINT_GROUP, registered

ASSETS = "tests/assets/rewards.py"


@pytest.fixture(autouse=True)
def at_repo_root(monkeypatch, request):
    monkeypatch.chdir(request.config.rootpath)


def test_loads_a_registry_name():
    assert resolve("exact_match")("4", prompt="", answer=4) == 1.0


def test_every_builtin_resolves():
    for name in BUILTINS:
        assert callable(resolve(name))


def test_loads_module_function():
    assert resolve("reward.gsm8k:gsm8k_exact_match")("#### 7", answer=7) == 1.0


def test_loads_function_from_a_file():
    assert resolve(f"{ASSETS}:distinct_characters")("aab", prompt="") == pytest.approx(2 / 20)


def test_loads_a_package_registered_through_entry_points(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text("def shout(completion, **row):\n    return float(completion.isupper())\n")
    dist = tmp_path / "my_rewards-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-rewards\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nshout = my_rewards:shout\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert registered()["shout"] == "my_rewards:shout"
    assert resolve("shout")("HEY") == 1.0
    sys.modules.pop("my_rewards", None)


def test_kwargs_are_bound_to_functions():
    fn = instantiate(resolve("regex_format"), {"pattern": r"^\d+$"})
    assert fn("42", prompt="") == 1.0 and fn("x42", prompt="") == 0.0


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("exact_mach", "not a registered reward; did you mean 'exact_match'?"),
        ("no_such_module:fn", "cannot import 'no_such_module'"),
        ("reward.arithmetic:nope", "has no function 'nope'"),
        ("missing/file.py:fn", "cannot import 'missing/file.py'"),
        (":fn", "expected a name"),
    ],
)
def test_bad_reference_names_the_key_and_the_reason(spec, message):
    with pytest.raises(ValueError, match=r"reward\.functions\.0\.fn") as info:
        resolve(spec, "reward.functions.0.fn")
    assert message in str(info.value)
