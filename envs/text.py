"""Text observations as numbers: words hashed into a fixed vocabulary, padded to a fixed length.

BabyAI missions are ``gymnasium.spaces.Text``, which vectorized envs (SB3's, gymnasium's) cannot batch and
networks cannot take. ``hash_tokens`` maps each word to an id in ``1..buckets-1`` with a stable hash (no
vocabulary to build, store or share; 0 pads), so a dataset's strings and an env's live missions encode the
same way. ``TextTokens`` wraps an env so every Text part of its observation comes out encoded.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable

import gymnasium as gym
import numpy as np

BUCKETS = 4096
LENGTH = 16
_WORD = re.compile(r"[a-z0-9]+")


def hash_tokens(texts: Iterable[str], buckets: int = BUCKETS, length: int = LENGTH) -> np.ndarray:
    """(N, length) int64 word ids of ``texts``: lower-cased words, crc32-hashed into 1..buckets-1, 0-padded
    (longer texts are cut)."""
    texts = list(texts)
    out = np.zeros((len(texts), length), dtype=np.int64)
    cache: dict[str, int] = {}
    for i, text in enumerate(texts):
        words = _WORD.findall(str(text).lower())[:length]
        for k, word in enumerate(words):
            if word not in cache:
                cache[word] = 1 + zlib.crc32(word.encode()) % (buckets - 1)
            out[i, k] = cache[word]
    return out


def token_space(buckets: int = BUCKETS, length: int = LENGTH) -> gym.spaces.Box:
    return gym.spaces.Box(0, buckets - 1, (length,), np.int64)


def encode_space(space: gym.Space, buckets: int = BUCKETS, length: int = LENGTH) -> gym.Space:
    """``space`` with every Text part replaced by its token space."""
    if isinstance(space, gym.spaces.Text):
        return token_space(buckets, length)
    if isinstance(space, gym.spaces.Dict):
        return gym.spaces.Dict({k: encode_space(s, buckets, length) for k, s in space.spaces.items()})
    return space


def has_text(space: gym.Space) -> bool:
    if isinstance(space, gym.spaces.Text):
        return True
    return isinstance(space, gym.spaces.Dict) and any(has_text(s) for s in space.spaces.values())


class TextTokens(gym.ObservationWrapper):
    """Every Text part of the observation as ``hash_tokens`` ids (an int64 Box of ``length``)."""

    def __init__(self, env: gym.Env, buckets: int = BUCKETS, length: int = LENGTH):
        super().__init__(env)
        self.buckets, self.length = buckets, length
        self.observation_space = encode_space(env.observation_space, buckets, length)

    def observation(self, observation):
        return self._encode(self.env.observation_space, observation)

    def _encode(self, space: gym.Space, value):
        if isinstance(space, gym.spaces.Text):
            return hash_tokens([value], self.buckets, self.length)[0]
        if isinstance(space, gym.spaces.Dict):
            return {k: self._encode(s, value[k]) for k, s in space.spaces.items()}
        return value


# --- text as bytes: lossless, for policies with a tokenizer of their own (LM policies) --------------------

BYTES = 512
"""Bytes a text part becomes (``envs.babyai.MISSION_MAX_LENGTH``: every BabyAI mission fits)."""


def bytes_space(length: int = BYTES) -> gym.spaces.Box:
    return gym.spaces.Box(0, 255, (length,), np.uint8)


def text_to_bytes(text: str, length: int = BYTES) -> np.ndarray:
    """``text`` as UTF-8 bytes, zero-padded to ``length``; ValueError if it does not fit (nothing is cut)."""
    raw = str(text).encode()
    if len(raw) > length:
        raise ValueError(f"text of {len(raw)} bytes does not fit {length}: {text[:60]!r}...")
    out = np.zeros(length, dtype=np.uint8)
    out[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return out


def bytes_to_text(rows: np.ndarray) -> list[str]:
    """The strings of a (N, length) or (length,) byte array written by ``text_to_bytes``."""
    rows = np.atleast_2d(np.asarray(rows, dtype=np.uint8))
    return [row.tobytes().rstrip(b"\0").decode() for row in rows]


class TextBytes(gym.ObservationWrapper):
    """Every Text part of the observation as UTF-8 bytes (a uint8 Box): vectorized envs batch it, and a policy
    with its own tokenizer (an LM's) reads the exact string back with ``bytes_to_text``."""

    def __init__(self, env: gym.Env, length: int = BYTES):
        super().__init__(env)
        self.length = length
        self.observation_space = self._space(env.observation_space)

    def _space(self, space: gym.Space) -> gym.Space:
        if isinstance(space, gym.spaces.Text):
            return bytes_space(self.length)
        if isinstance(space, gym.spaces.Dict):
            return gym.spaces.Dict({k: self._space(s) for k, s in space.spaces.items()})
        return space

    def observation(self, observation):
        return self._encode(self.env.observation_space, observation)

    def _encode(self, space: gym.Space, value):
        if isinstance(space, gym.spaces.Text):
            return text_to_bytes(value, self.length)
        if isinstance(space, gym.spaces.Dict):
            return {k: self._encode(s, value[k]) for k, s in space.spaces.items()}
        return value
