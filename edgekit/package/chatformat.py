"""Reduce a Jinja chat template to fixed strings a phone app can apply without a Jinja engine.

Most chat templates (ChatML, Llama 3, Zephyr, ...) put fixed text before and after each message and a
fixed generation prompt at the end, sometimes with a default system message when the conversation has
none. The pieces are read off renders of the real template with marker contents, then the reduced
form is rendered back on probe conversations and must equal the template's output exactly; a template
that does not reduce (one that changes text by position, strips content, ...) gets ``format: null``
and the reason, so an app never guesses. Hand-written: no library derives this.
"""

from __future__ import annotations

from typing import Any

from edgekit.errors import EdgekitError

_MARK = ("\u2402S\u2403", "\u2402U\u2403", "\u2402A\u2403", "\u2402V\u2403")  # contents no template rewrites

PROBES: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, how can I help?"},
     {"role": "user", "content": "Tell me a joke.\nA short one."}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}, {"role": "user", "content": "  e  "}],
]


def apply(fmt: dict[str, Any], messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """The prompt text for ``messages`` by the reduced format (what the Kotlin and Swift apps do)."""
    parts = [fmt["prefix"]]
    if fmt.get("default_system") is not None and (not messages or messages[0]["role"] != "system"):
        role = fmt["roles"]["system"]
        parts += [role["before"], fmt["default_system"], role["after"]]
    for message in messages:
        role = fmt["roles"][message["role"]]
        parts += [role["before"], message["content"], role["after"]]
    if add_generation_prompt:
        parts.append(fmt["generation_prompt"])
    return "".join(parts)


def _split(text: str, marks: tuple[str, ...]) -> list[str]:
    pieces, rest = [], text
    for mark in marks:
        if rest.count(mark) != 1:
            raise ValueError(f"the template does not copy a message's content verbatim exactly once ({mark!r})")
        head, rest = rest.split(mark)
        pieces.append(head)
    return [*pieces, rest]


def _strip_prefix(text: str, prefix: str, what: str) -> str:
    if not text.startswith(prefix):
        raise ValueError(f"{what} is not a fixed string")
    return text[len(prefix):]


def derive(template: str | None, bos_token: str | None, eos_token: str | None) -> tuple[dict[str, Any] | None, str]:
    """(format, problem): the reduced format and "" if it renders every probe exactly as ``template`` does,
    else (None, why not)."""
    if not template:
        return None, "the model has no chat template"
    from runtimes.chat import render

    def r(messages: list[dict[str, str]], gen: bool = False) -> str:
        return render(template, messages, bos_token=bos_token, eos_token=eos_token, add_generation_prompt=gen)

    s, u, a, v = _MARK
    try:
        # system alone: prefix + before_sys | S | after_sys
        head_sys, after_sys = _split(r([{"role": "system", "content": s}]), (s,))
        # system, user, assistant, user
        conv = [{"role": "system", "content": s}, {"role": "user", "content": u}, {"role": "assistant", "content": a},
                {"role": "user", "content": v}]
        p0, p1, p2, p3, p4 = _split(r(conv), _MARK)
        if p0 != head_sys:
            raise ValueError("the text before the system message depends on what follows")
        before_user = _strip_prefix(p1, after_sys, "the text after the system message")
        after_user = _split(r(conv[:2]), (s, u))[2]
        before_asst = _strip_prefix(p2, after_user, "the text after a user message")
        after_asst = _split(r(conv[:3]), (s, u, a))[3]
        if _strip_prefix(p3, after_asst, "the text after an assistant message") != before_user or p4 != after_user:
            raise ValueError("a user message renders differently later in the conversation")
        gen_prompt = _strip_prefix(r(conv[:2], gen=True), r(conv[:2]), "the generation prompt")
        # the prefix is what stands before the first role header: the BOS text if the template writes it
        prefix = bos_token if bos_token and head_sys.startswith(bos_token) and not before_user.startswith(bos_token) \
            else ""
        before_sys = head_sys[len(prefix):]
        # user first: a default system message appears between the prefix and the user's header, or nothing
        q0 = _split(r([{"role": "user", "content": u}]), (u,))[0]
        default_system = None
        if q0 != prefix + before_user:
            middle = _strip_prefix(q0, prefix + before_sys, "the text before a first user message")
            if not middle.endswith(after_sys + before_user):
                raise ValueError("the text before a first user message is neither nothing nor a default system message")
            default_system = middle[:len(middle) - len(after_sys + before_user)]
    except (ValueError, EdgekitError) as err:
        return None, str(err)
    fmt = {"prefix": prefix,
           "roles": {"system": {"before": before_sys, "after": after_sys},
                     "user": {"before": before_user, "after": after_user},
                     "assistant": {"before": before_asst, "after": after_asst}},
           "generation_prompt": gen_prompt, "default_system": default_system}
    for probe in PROBES:
        for gen in (True, False):
            try:
                expected = r(probe, gen)
            except EdgekitError:
                continue  # a template may refuse a conversation shape (e.g. a system message); nothing to match
            if apply(fmt, probe, gen) != expected:
                return None, f"the reduced form differs from the template on a {len(probe)}-message probe"
    return fmt, ""
