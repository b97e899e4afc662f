"""Unit tests of per-connection policy: token buckets, rate limits and the abuse close,
content cleaning, chat id checks, the typing throttle, the user registry. No clock: every
call takes `now`."""

from __future__ import annotations

import pytest

from gurukul_fast.auth import Principal
from gurukul_fast.config import Config
from gurukul_fast.session import (
    AbuseError,
    ConnectionState,
    InputError,
    RateKind,
    RateLimits,
    TokenBucket,
    TypingThrottle,
    UserRegistry,
    check_chat_id,
    clean_content,
)

T0 = 1000.0

# ---------------------------------------------------------------- token bucket


def test_bucket_allows_capacity_then_refuses_with_wait() -> None:
    bucket = TokenBucket(5, T0)  # 5 per minute: one token every 12 s
    assert [bucket.take(T0) for _ in range(5)] == [0.0] * 5
    wait = bucket.take(T0)
    assert wait == pytest.approx(12.0)


def test_bucket_wait_shrinks_as_time_passes_and_refills() -> None:
    bucket = TokenBucket(5, T0)
    for _ in range(5):
        bucket.take(T0)
    assert bucket.take(T0 + 3.0) == pytest.approx(9.0)
    assert bucket.take(T0 + 12.0) == 0.0  # one token back
    assert bucket.take(T0 + 12.0) > 0.0


def test_bucket_never_exceeds_capacity_after_a_long_idle() -> None:
    bucket = TokenBucket(3, T0)
    results = [bucket.take(T0 + 10_000.0) for _ in range(4)]
    assert results[:3] == [0.0, 0.0, 0.0]
    assert results[3] > 0.0


def test_bucket_custom_period() -> None:
    bucket = TokenBucket(2, T0, period_s=1.0)
    assert bucket.take(T0) == 0.0
    assert bucket.take(T0) == 0.0
    assert bucket.take(T0) == pytest.approx(0.5)
    assert bucket.take(T0 + 0.5) == 0.0


def test_bucket_ignores_a_clock_going_backwards() -> None:
    bucket = TokenBucket(1, T0)
    assert bucket.take(T0) == 0.0
    assert bucket.take(T0 - 100.0) > 0.0


# ---------------------------------------------------------------- rate limits


def limits_config(**overrides: int) -> Config:
    settings = {
        "message_rate_limit": 2,
        "typing_rate_limit": 3,
        "receipt_rate_limit": 4,
        "control_rate_limit": 5,
    }
    settings.update(overrides)
    return Config(**settings)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "capacity"),
    [(RateKind.MESSAGE, 2), (RateKind.TYPING, 3), (RateKind.RECEIPT, 4), (RateKind.CONTROL, 5)],
)
def test_each_kind_has_its_configured_budget(kind: RateKind, capacity: int) -> None:
    limits = RateLimits(limits_config(), T0)
    assert all(limits.take(kind, T0) == 0.0 for _ in range(capacity))
    assert limits.take(kind, T0) > 0.0


def test_kinds_do_not_share_budgets() -> None:
    limits = RateLimits(limits_config(), T0)
    limits.take(RateKind.MESSAGE, T0)
    limits.take(RateKind.MESSAGE, T0)
    assert limits.take(RateKind.MESSAGE, T0) > 0.0
    assert limits.take(RateKind.TYPING, T0) == 0.0
    assert limits.take(RateKind.CONTROL, T0) == 0.0


def state_for(config: Config, user: str = "u1", conn_id: int = 1) -> ConnectionState:
    principal = Principal(user_id=user, chats=frozenset(), expires_at=T0 + 3600)
    return ConnectionState(conn_id, principal, RateLimits(config, T0))


def test_check_rate_returns_wait_and_then_raises_abuse() -> None:
    state = state_for(limits_config(message_rate_limit=1))
    assert state.check_rate(RateKind.MESSAGE, T0, abuse_limit=3) == 0.0
    waits = [state.check_rate(RateKind.MESSAGE, T0, abuse_limit=3) for _ in range(3)]
    assert all(w > 0.0 for w in waits)
    assert state.refused_in_a_row == 3
    with pytest.raises(AbuseError):
        state.check_rate(RateKind.MESSAGE, T0, abuse_limit=3)


def test_an_allowed_event_resets_the_abuse_count() -> None:
    state = state_for(limits_config(message_rate_limit=1))
    state.check_rate(RateKind.MESSAGE, T0, abuse_limit=2)
    state.check_rate(RateKind.MESSAGE, T0, abuse_limit=2)
    state.check_rate(RateKind.MESSAGE, T0, abuse_limit=2)
    assert state.refused_in_a_row == 2
    # A minute later the bucket is full again: allowed, and the streak is forgotten.
    assert state.check_rate(RateKind.MESSAGE, T0 + 60.0, abuse_limit=2) == 0.0
    assert state.refused_in_a_row == 0
    assert state.check_rate(RateKind.MESSAGE, T0 + 60.0, abuse_limit=2) > 0.0
    assert state.check_rate(RateKind.MESSAGE, T0 + 60.0, abuse_limit=2) > 0.0


def test_connection_state_user_id_follows_principal() -> None:
    state = state_for(limits_config(), user="alice")
    assert state.user_id == "alice"
    assert state.joined == set()
    assert state.allowed == set()


# ---------------------------------------------------------------- user registry


def test_user_registry_shares_limits_between_connections() -> None:
    registry = UserRegistry(limits_config(message_rate_limit=1))
    first = registry.attach("u1", T0)
    second = registry.attach("u1", T0)
    assert first is second
    assert registry.connection_count("u1") == 2
    assert first.take(RateKind.MESSAGE, T0) == 0.0
    assert second.take(RateKind.MESSAGE, T0) > 0.0  # the same budget
    other = registry.attach("u2", T0)
    assert other is not first
    assert other.take(RateKind.MESSAGE, T0) == 0.0
    assert len(registry) == 2


def test_user_registry_detach_reports_last_connection() -> None:
    registry = UserRegistry(limits_config())
    registry.attach("u1", T0)
    registry.attach("u1", T0)
    assert registry.detach("u1") is False
    assert registry.connection_count("u1") == 1
    assert registry.detach("u1") is True
    assert registry.connection_count("u1") == 0
    assert len(registry) == 0
    assert registry.detach("never-seen") is True


def test_user_registry_forgets_limits_with_the_last_connection() -> None:
    registry = UserRegistry(limits_config(message_rate_limit=1))
    registry.attach("u1", T0).take(RateKind.MESSAGE, T0)
    registry.detach("u1")
    assert registry.attach("u1", T0).take(RateKind.MESSAGE, T0) == 0.0


# ---------------------------------------------------------------- content


def test_clean_content_keeps_ordinary_text() -> None:
    assert clean_content("Hello, how are you?", 100) == "Hello, how are you?"


def test_clean_content_keeps_newline_and_tab() -> None:
    assert clean_content("line one\n\tline two", 100) == "line one\n\tline two"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a\x00b", "ab"),
        ("a\x07b\x08c", "abc"),
        ("a\x1bb", "ab"),  # ESC: no terminal escapes stored
        ("a\rb", "ab"),
        ("a\x0bb\x0cc", "abc"),
        ("a\x7fb", "ab"),
        ("a\x85b\x9fc", "abc"),  # C1 controls
    ],
)
def test_clean_content_strips_control_characters(raw: str, expected: str) -> None:
    assert clean_content(raw, 100) == expected


def test_clean_content_normalises_to_nfc() -> None:
    decomposed = "Cafe\u0301"  # e + combining acute accent
    cleaned = clean_content(decomposed, 100)
    assert cleaned == "Caf\u00e9"
    assert len(cleaned) == 4


def test_clean_content_keeps_non_latin_and_emoji() -> None:
    text = "नमस्ते 😀 <b>not html</b>"
    assert clean_content(text, 100) == text


@pytest.mark.parametrize("raw", ["", "   ", "\n\t", "\x00\x01", " \x7f "])
def test_empty_content_is_400(raw: str) -> None:
    with pytest.raises(InputError) as caught:
        clean_content(raw, 100)
    assert caught.value.code == 400


def test_content_at_the_limit_is_accepted() -> None:
    assert clean_content("x" * 10, 10) == "x" * 10


def test_content_over_the_limit_is_413() -> None:
    with pytest.raises(InputError) as caught:
        clean_content("x" * 11, 10)
    assert caught.value.code == 413
    assert "10" in caught.value.message


def test_huge_content_is_413_without_normalising() -> None:
    with pytest.raises(InputError) as caught:
        clean_content("x" * 1_000_000, 10)
    assert caught.value.code == 413


def test_limit_counts_characters_after_cleaning() -> None:
    # Control characters do not count; NFC composition shortens the text.
    assert clean_content("\x00" * 5 + "x" * 10, 10) == "x" * 10
    assert clean_content("e\u0301" * 10, 10) == "\u00e9" * 10


# ---------------------------------------------------------------- chat ids


@pytest.mark.parametrize(
    "chat_id", ["chat-123", "c", "a.b:c@d_e-f", "9" * 128, "Chat_With.Dots:and@at"]
)
def test_acceptable_chat_ids(chat_id: str) -> None:
    assert check_chat_id(chat_id, 128) == chat_id


@pytest.mark.parametrize(
    "chat_id",
    [
        "",
        "x" * 129,
        "-leading-dash",
        "_leading",
        "has space",
        "slash/inside",
        "new\nline",
        "trailing\n",
        "ünïcode",
        "<script>",
        "a;DROP",
    ],
)
def test_refused_chat_ids(chat_id: str) -> None:
    with pytest.raises(InputError) as caught:
        check_chat_id(chat_id, 128)
    assert caught.value.code == 400
    assert caught.value.message == "Invalid chatId"


# ---------------------------------------------------------------- typing throttle


def test_typing_start_is_relayed_repeats_are_throttled() -> None:
    throttle = TypingThrottle(1.0)
    assert throttle.should_relay("u1", "c", True, T0) is True
    assert throttle.should_relay("u1", "c", True, T0 + 0.2) is False
    assert throttle.should_relay("u1", "c", True, T0 + 0.9) is False
    assert throttle.should_relay("u1", "c", True, T0 + 1.0) is True
    assert throttle.should_relay("u1", "c", True, T0 + 1.5) is False


def test_typing_stop_is_always_relayed_once() -> None:
    throttle = TypingThrottle(1.0)
    throttle.should_relay("u1", "c", True, T0)
    assert throttle.is_typing("u1", "c")
    assert throttle.should_relay("u1", "c", False, T0 + 0.1) is True
    assert not throttle.is_typing("u1", "c")
    assert throttle.should_relay("u1", "c", False, T0 + 0.2) is False
    # After a stop, a new start goes out at once.
    assert throttle.should_relay("u1", "c", True, T0 + 0.3) is True


def test_typing_stop_without_start_is_not_relayed() -> None:
    assert TypingThrottle(1.0).should_relay("u1", "c", False, T0) is False


def test_typing_is_tracked_per_user_and_chat() -> None:
    throttle = TypingThrottle(1.0)
    assert throttle.should_relay("u1", "c1", True, T0)
    assert throttle.should_relay("u1", "c2", True, T0)
    assert throttle.should_relay("u2", "c1", True, T0)
    assert throttle.is_typing("u1", "c1")
    assert not throttle.is_typing("u2", "c2")


def test_typing_forget_clears_state() -> None:
    throttle = TypingThrottle(1.0)
    throttle.should_relay("u1", "c", True, T0)
    throttle.forget("u1", "c")
    assert not throttle.is_typing("u1", "c")
    assert throttle.should_relay("u1", "c", False, T0) is False
    assert throttle.should_relay("u1", "c", True, T0 + 0.1) is True
    throttle.forget("nobody", "nowhere")  # harmless
