"""A reward that varies between completions of a random model (exact match is 0 for all of them, which leaves GRPO
nothing to learn): the completion's length in characters, scaled."""

from mixwise.rewards import completion_text


def length_reward(completions, **kwargs):
    return [len(completion_text(c)) / 10.0 for c in completions]
