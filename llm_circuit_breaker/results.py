"""Answers that are no answers: predicates over openai / anthropic completions and their dicts.

::

    from llm_circuit_breaker import results

    response = client.chat.completions.create(...)
    if results.length_empty(response):  # a reasoning model spent its budget: raise max_tokens
        ...

``empty``, ``length_empty``, ``content_filter`` and ``invalid_tool_arguments`` take a Chat
Completions, Responses or Anthropic Messages response (the SDK's object or its dict) and never
raise; :func:`non_answer` names the kind (or None for an answer, or for anything that is not a
completion). ``with_retry`` retries ``empty`` and ``invalid_tool_arguments`` by default
(``retry_on_result=`` changes that) and raises :class:`~llm_circuit_breaker.InvalidResponseError`
when its retries run out; ``with_fallbacks(on_content_policy=True)`` moves on after a
``content_filter`` answer.
"""

from llm_circuit_breaker._judge.results import (
    NonAnswer,
    content_filter,
    empty,
    invalid_tool_arguments,
    length_empty,
    non_answer,
    retried_by_default,
)

__all__ = [
    "NonAnswer",
    "content_filter",
    "empty",
    "invalid_tool_arguments",
    "length_empty",
    "non_answer",
    "retried_by_default",
]
