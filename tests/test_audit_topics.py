"""Prompt topics on planted clusters: the right partition, the right k, sensible labels."""

from __future__ import annotations

import numpy as np
import pytest

from anatomist.audit.topics import distinctive_words, prompt_topics
from anatomist.errors import AnatomistError

WORDS = {0: "recipe oven bake flour", 1: "python code function error", 2: "flight hotel visa trip"}


def _planted(seed=0, per=20):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 32))
    emb = np.repeat(centres, per, axis=0) + 0.4 * rng.normal(size=(3 * per, 32)) + 5.0  # offset: centring matters
    texts = [f"please help with {WORDS[c]} number {i}" for c in range(3) for i in range(per)]
    return emb, texts, np.repeat(np.arange(3), per)


def _same_partition(a, b):
    return all(len(set(a[b == t])) == 1 for t in set(b)) and len(set(a)) == len(set(b))


@pytest.mark.parametrize("method", ["kmeans", "leiden"])
def test_recovers_planted_topics_and_labels(method):
    emb, texts, truth = _planted()
    topics = prompt_topics(emb, texts, method=method)
    assert topics.k == 3 and _same_partition(topics.labels, truth)
    for c in range(3):
        planted = truth[topics.labels == c][0]
        assert set(topics.names[c].split(" / ")) <= set(WORDS[planted].split())
        assert all(WORDS[planted] in t for t in topics.examples[c])
    assert topics.silhouette > 0.5


def test_k_override_and_bad_arguments():
    emb, texts, _ = _planted()
    assert prompt_topics(emb, texts, k=2).k == 2
    assert prompt_topics(emb, texts, k=1).k == 1
    with pytest.raises(AnatomistError, match="k must be in 1..59"):
        prompt_topics(emb, texts, k=60)
    with pytest.raises(AnatomistError, match="60 prompt embeddings but 3 prompt texts"):
        prompt_topics(emb, texts[:3])
    with pytest.raises(AnatomistError, match="method must be"):
        prompt_topics(emb, texts, method="dbscan")


def test_distinctive_words_hand_case():
    texts = ["apple banana", "apple cherry", "car engine", "car wheel"]
    names = distinctive_words(texts, np.array([0, 0, 1, 1]), n_words=1)
    assert names == ["apple", "car"]


def test_minilm_embeddings_separate_real_topics():
    from anatomist.audit.embed import minilm_embed

    texts = ["What is a good recipe for baking bread in the oven?", "How do I cook a vegetable soup recipe?",
             "Which spices should I use when cooking a chicken curry?", "How long do I bake a chocolate cake?",
             "How do I fix a bug in my Python code?", "Why does my Python script throw an error?",
             "How do I write a function in Python code?", "How do I debug a crash in my Python program?",
             "What should I pack for a trip to Japan?", "Is Spain a good country for a summer vacation trip?",
             "How do I find a cheap hotel for my trip to Paris?", "Do I need a visa for my vacation in Thailand?"]
    truth = np.repeat(np.arange(3), 4)
    emb = minilm_embed(texts)
    assert emb.shape == (12, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    topics = prompt_topics(emb, texts, k=3)
    assert _same_partition(topics.labels, truth)


def test_topic_names_have_no_stop_words_on_real_prompts(shared_data):
    """HH-RLHF prompts are full of chat filler ("I want to know what you think, don't you?"); the
    model-residual topics of an HH audit were named "people / think / want / don"."""
    from anatomist.audit.run import prompt_text
    from anatomist.audit.topics import CHAT_FILLER, stop_words
    from anatomist.data import load_pairs

    texts = [prompt_text(p) for p in load_pairs(shared_data / "hh-rlhf-harmless-base-test-dev.jsonl.gz", limit=200,
                                                on_bad_row="skip")]
    names = distinctive_words(texts, np.arange(len(texts)) % 3)           # topics of mixed prompts: filler-heavy
    words = [w for n in names for w in n.split(" / ")]
    assert len(words) == 12 and not set(words) & stop_words() and {"want", "think", "don"} <= CHAT_FILLER
    assert all(w.isalpha() and w == w.lower() for w in words)


def test_content_words_drop_contractions_and_keep_possessive_stems():
    from anatomist.audit.topics import content_words

    text = "Don't you think Trump's wall is BIG? I'm sure it’s a wall"
    assert content_words(text, frozenset({"is", "a", "it"})) == ["you", "think", "trump", "wall", "big", "sure", "wall"]
