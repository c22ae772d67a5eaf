"""The application's words: counts in the singular for one."""

from iresnet.app.words import count


def test_count_is_singular_for_one_only():
    assert [count(n, "step") for n in (0, 1, 2)] == ["0 steps", "1 step", "2 steps"]
    assert count(1, "fc block") == "1 fc block" and count(3, "fc block") == "3 fc blocks"
