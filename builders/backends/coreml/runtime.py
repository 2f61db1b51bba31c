"""The host side of an ANEMLL-style model: embeddings -> chunks (prefill in batches, then one token at a
time with `infer`) -> LM head, with the KV cache state of each chunk. The same driver runs the saved
programs through the numpy interpreter on Linux (milrun) and through Core ML on macOS (smoke test):
a part is any callable `fn(inputs: dict, state) -> outputs: dict`, with `new_state()` on chunks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

NEG = np.float16(-np.inf)


@dataclass
class Parts:
    embeddings: Callable
    infer: list  # per chunk: callable with .new_state()
    prefill: list
    lm_head: Callable
    context: int
    batch: int
    argmax: bool = False
    lm_head_rows: int = 1  # hidden states per lm_head call: 1 for Core ML (the declared [1, 1, H] input);
    # the numpy interpreter runs the same shape-agnostic ops on [1, n, H] (checks.load_parts)


def causal_mask(start: int, rows: int, context: int) -> np.ndarray:
    """[1, 1, rows, context]: row r (position start + r) sees positions <= start + r."""
    pos = start + np.arange(rows)[:, None]
    return np.where(np.arange(context)[None, :] <= pos, np.float16(0), NEG).astype(np.float16)[None, None]


class Session:
    def __init__(self, parts: Parts):
        self.p = parts
        self.states = [fn.new_state() for fn in parts.infer]
        self.pos = 0

    def _chunks(self, fns, h, positions, start):
        mask = causal_mask(start, len(positions), self.p.context)
        for fn, state in zip(fns, self.states):
            h = fn({"hidden_states": h, "position_ids": positions.astype(np.int32), "causal_mask": mask,
                    "current_pos": np.array([start], np.int32)}, state)["output_hidden_states"]
        return h

    def prefill(self, tokens) -> np.ndarray:
        """Hidden states [n, H] of `tokens` (from the current position, in batches of `batch`)."""
        tokens = np.asarray(tokens, np.int32)
        b, out = self.p.batch, []
        if self.pos + len(tokens) > self.p.context:
            raise ValueError(f"{self.pos + len(tokens)} tokens exceed the context {self.p.context}")
        for i in range(0, len(tokens), b):
            part = tokens[i:i + b]
            ids = np.zeros((1, b), np.int32)
            ids[0, :len(part)] = part
            start = self.pos
            if start + b > self.p.context:
                raise ValueError(f"prefill batch at {start} runs past the context {self.p.context}")
            h = self.p.embeddings({"input_ids": ids})["hidden_states"]
            h = self._chunks(self.p.prefill, h, np.arange(start, start + b), start)
            out.append(np.asarray(h)[0, :len(part)])
            self.pos += len(part)
        return np.concatenate(out)

    def decode(self, token: int) -> np.ndarray:
        """Hidden state [1, H] after one token at the current position."""
        h = self.p.embeddings({"input_ids": np.array([[token]], np.int32)})["hidden_states"]
        h = self._chunks(self.p.infer, h, np.array([self.pos]), self.pos)
        self.pos += 1
        return np.asarray(h)[0]

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        """[n, vocab] from hidden [n, H] (LM head without argmax), `lm_head_rows` hidden states per call, in
        the program's output dtype (fp16: the metrics upcast a block of rows at a time)."""
        hidden = np.asarray(hidden, np.float16).reshape(-1, np.shape(hidden)[-1])
        step, rows = max(1, self.p.lm_head_rows), []
        for i in range(0, len(hidden), step):
            h = hidden[i:i + step]
            out = self.p.lm_head({"hidden_states": h.reshape(1, len(h), -1)})
            keys = sorted((k for k in out if k.startswith("logits")), key=lambda k: int(k[6:]))
            parts = [np.asarray(out[k]) for k in keys]
            if not keys or any(p.shape[:2] != (1, len(h)) for p in parts):
                raise ValueError(f"LM head outputs {[p.shape for p in parts]} for {len(h)} hidden state(s); "
                                 "expected logits1..N of [1, n, rows]")
            rows.append(np.concatenate([p.reshape(len(h), -1) for p in parts], axis=1))
        self.p.lm_head.package.release()
        return np.concatenate(rows) if len(rows) > 1 else rows[0]

    def next_token(self, hidden: np.ndarray, split_sizes: list[int]) -> int:
        """Greedy token from one hidden state, through the in-model argmax when the LM head has one."""
        out = self.p.lm_head({"hidden_states": np.asarray(hidden, np.float16).reshape(1, 1, -1)})
        if "argmax_idx" in out:
            best = int(np.argmax(np.asarray(out["argmax_val"], np.float32)))
            return int(np.asarray(out["argmax_idx"]).reshape(-1)[best]) + int(sum(split_sizes[:best]))
        return int(self.logits(np.asarray(hidden).reshape(1, -1))[0].argmax())


def call_many(fn: Callable, calls: list[tuple[dict, dict | None]]) -> list[dict]:
    """Independent calls of one part: in lockstep where the part can (milrun.Function.run_many: one weight
    pass for all of them), else one after the other (Core ML)."""
    many = getattr(fn, "run_many", None)
    if many is not None and len(calls) > 1:
        return many(calls)
    return [fn(inputs) if state is None else fn(inputs, state) for inputs, state in calls]


def _chunks_many(sessions: list[Session], fns: list, hs: list, starts: list[int], rows: int) -> list:
    """Each session's hidden states [1, rows, H] from `starts` through every chunk, sessions in lockstep."""
    extra = [{"position_ids": np.arange(start, start + rows, dtype=np.int32),
              "causal_mask": causal_mask(start, rows, sessions[0].p.context),
              "current_pos": np.array([start], np.int32)} for start in starts]
    for c, fn in enumerate(fns):
        outs = call_many(fn, [({"hidden_states": h, **e}, s.states[c]) for h, e, s in zip(hs, extra, sessions)])
        hs = [o["output_hidden_states"] for o in outs]
    return hs


def prefill_many(sessions: list[Session], token_lists: list) -> list[np.ndarray]:
    """Session.prefill for each (session, tokens), the sessions' j-th batches run together."""
    token_lists = [np.asarray(t, np.int32) for t in token_lists]
    b = sessions[0].p.batch
    for s, t in zip(sessions, token_lists):
        if s.pos + -(-len(t) // b) * b > s.p.context:
            raise ValueError(f"prefill of {len(t)} tokens from position {s.pos} in batches of {b} runs past the "
                             f"context {s.p.context}")
    out: list[list] = [[] for _ in sessions]
    for j in range(max((len(t) for t in token_lists), default=0) // b + 1):
        active = [i for i, t in enumerate(token_lists) if j * b < len(t)]
        if not active:
            break
        ids = []
        for i in active:
            row = np.zeros((1, b), np.int32)
            part = token_lists[i][j * b:(j + 1) * b]
            row[0, :len(part)] = part
            ids.append(row)
        embeds = call_many(sessions[0].p.embeddings, [({"input_ids": x}, None) for x in ids])
        hs = _chunks_many([sessions[i] for i in active], sessions[0].p.prefill, [e["hidden_states"] for e in embeds],
                          [sessions[i].pos for i in active], b)
        for i, h in zip(active, hs):
            n = min(b, len(token_lists[i]) - j * b)
            out[i].append(np.asarray(h)[0, :n])
            sessions[i].pos += n
    return [np.concatenate(o) if o else np.zeros((0, 0), np.float16) for o in out]


def decode_many(sessions: list[Session], tokens: list[int]) -> list[np.ndarray]:
    """Session.decode of one token per session, the sessions in lockstep."""
    for s in sessions:
        if s.pos + 1 > s.p.context:
            raise ValueError(f"decode at position {s.pos} runs past the context {s.p.context}")
    embeds = call_many(sessions[0].p.embeddings, [({"input_ids": np.array([[t]], np.int32)}, None) for t in tokens])
    hs = _chunks_many(sessions, sessions[0].p.infer, [e["hidden_states"] for e in embeds], [s.pos for s in sessions], 1)
    for s in sessions:
        s.pos += 1
    return [np.asarray(h)[0] for h in hs]


def teacher_forced_many(parts: Parts, prompts: list[tuple], text) -> tuple[list, np.ndarray]:
    """teacher_forced for every (tokens, prompt_len) of `prompts` and prefill hidden states of `text`,
    all sessions in lockstep: the prompts and the text prefilled together, then one decode round per
    continuation position. The LM head runs once over all hidden states (`lm_head_rows` at a time).
    Returns ([(prefill logits, decode logits)] per prompt, text logits); an empty `text` is not run (its
    logits: an empty array)."""
    texts = [text] if len(text) else []
    sessions = [Session(parts) for _ in range(len(prompts) + len(texts))]
    pre = prefill_many(sessions, [t[:n] for t, n in prompts] + texts)
    dec: list[list] = [[] for _ in prompts]
    for k in range(max((len(t) - n for t, n in prompts), default=0)):
        live = [i for i, (t, n) in enumerate(prompts) if n + k < len(t)]
        for i, h in zip(live, decode_many([sessions[i] for i in live], [int(prompts[i][0][prompts[i][1] + k])
                                                                        for i in live])):
            dec[i].append(h)
    n = len(prompts)
    blocks = [*pre[:n], *(np.concatenate(d) if d else np.zeros((0, pre[0].shape[-1]), np.float16) for d in dec),
              *pre[n:]]
    logits = sessions[0].logits(np.concatenate(blocks))
    cuts = np.cumsum([len(b) for b in blocks])[:-1]
    per = np.split(logits, cuts)
    return [(per[i], per[n + i]) for i in range(n)], (per[-1] if texts else logits[:0])


def teacher_forced(parts: Parts, tokens, prompt_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a reference prompt: prefill over the prompt, then `decode` over the rest (teacher
    forced). Returns (prefill logits [prompt_len, V], decode logits [n - prompt_len, V])."""
    s = Session(parts)
    pre = s.logits(s.prefill(tokens[:prompt_len]))
    dec = [s.decode(int(t)) for t in tokens[prompt_len:]]
    return pre, (s.logits(np.concatenate(dec)) if dec else np.zeros((0, pre.shape[1]), np.float32))


def generate(parts: Parts, prompt, steps: int, split_sizes: list[int]) -> list[int]:
    """Greedy generation (for the chat smoke test)."""
    s = Session(parts)
    h = s.prefill(prompt)[-1:]
    out = []
    for _ in range(steps):
        tok = s.next_token(h, split_sizes)
        out.append(tok)
        h = s.decode(tok)
    return out
