"""Reading and steering the residual stream of a transformers decoder (plain or with a peft adapter).

Layer convention: layer ``l`` (0-based, ``0 .. n_layers - 1``) is decoder block ``l``, and its activation is the
block's output, the residual stream after the block. With ``output_hidden_states=True`` transformers returns
``n_layers + 1`` tensors: ``hidden_states[0]`` is the embedding output and block output ``l`` is
``hidden_states[l + 1]``, except that transformers 5.x takes the last entry after the final norm. embench reads
block outputs with forward hooks on the blocks themselves, so layer ``n_layers - 1`` is the raw block output too,
and a steering hook adds to exactly the activation that extraction reads.

Prompts are batched with left padding (the last prompt token of every row is the last column) and position ids
counted from each row's first real token, so a padded row computes what it would compute alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

from embench.errors import EmbenchError
from embench.progress import Counter


def decoder_layers(network):
    """The decoder blocks of a causal LM, through a peft wrapper if there is one."""
    return network.get_decoder().layers


def check_layers(layers: Sequence[int], n_layers: int, model_name: str) -> tuple[int, ...]:
    """Sorted, distinct layers, each inside the model."""
    outside = [layer for layer in layers if not 0 <= layer < n_layers]
    if outside:
        raise EmbenchError(f"layer {outside[0]} is outside the model: {model_name} has {n_layers} decoder layers "
                           f"(0-{n_layers - 1})")
    if not layers:
        raise EmbenchError("no layers given: name at least one decoder layer")
    return tuple(sorted(set(layers)))


def parse_layers(text: str, n_layers: int, model_name: str) -> tuple[int, ...]:
    """``all``, or a comma list of layers and ranges: ``4,8,12`` or ``6-20``."""
    if text.strip() == "all":
        return tuple(range(n_layers))
    layers: list[int] = []
    try:
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            layers.extend(range(int(first), int(last or first) + 1))
    except ValueError:
        raise EmbenchError(f"--layers '{text}' is not a layer list: use 'all', '4,8,12' or '6-20'") from None
    return check_layers(layers, n_layers, model_name)


def _block_output(output):
    # A decoder block returns a tensor in transformers 5.x and a tuple (hidden, ...) in older releases.
    return output if not isinstance(output, tuple) else output[0]


@contextmanager
def steering(network, layer: int, vector) -> Iterator[None]:
    """Add ``vector`` to block ``layer``'s output at every position while the context is open: ``[hidden]`` for
    every row, or ``[rows, 1, hidden]`` for one vector per row of the batch."""
    def add(module, inputs, output):
        if isinstance(output, tuple):
            return (output[0] + vector.to(output[0].dtype), *output[1:])
        return output + vector.to(output.dtype)

    handle = decoder_layers(network)[layer].register_forward_hook(add)
    try:
        yield
    finally:
        handle.remove()


class _StopForward(Exception):
    """Raised by the hook on the deepest layer read: the blocks after it are not needed."""


def _right_aligned(rows: Sequence[Sequence], fill, dtype):
    import torch

    width = max(len(row) for row in rows)
    out = torch.full((len(rows), width), fill, dtype=dtype)
    for index, row in enumerate(rows):
        out[index, width - len(row):] = torch.tensor(row, dtype=dtype)
    return out


def left_pad(rows: Sequence[Sequence[int]], pad_id: int):
    """(input ids, attention mask, position ids) of token rows, right-aligned."""
    import torch

    ids = _right_aligned(rows, pad_id, torch.long)
    mask = _right_aligned([[1] * len(row) for row in rows], 0, torch.long)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def _batches(count: int, lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    # Similar lengths batch together so that little compute goes to padding.
    order = sorted(range(count), key=lambda index: lengths[index])
    for start in range(0, count, batch_size):
        yield order[start:start + batch_size]


def block_activations(network, rows: Sequence[Sequence[int]], layers: Sequence[int], pad_id: int,
                      weights: Sequence[Sequence[float]] | None = None, batch_size: int = 64,
                      progress: Counter | None = None):
    """Block outputs at ``layers`` for each token row, as a float32 tensor ``[rows, layers, hidden]``.

    Without ``weights`` the activation of a row is the one at its last token; with ``weights`` (one number per
    token of the row) it is the weighted mean over the row's tokens, e.g. 1 on response tokens and 0 on the prompt.
    Only the blocks up to the deepest layer read are run.
    """
    import torch

    blocks = decoder_layers(network)
    captured: dict[int, torch.Tensor] = {}
    deepest = max(layers)
    current: dict[str, torch.Tensor | None] = {"weights": None}

    def capture(layer: int):
        def hook(module, inputs, output):
            hidden = _block_output(output).float()
            if current["weights"] is None:
                captured[layer] = hidden[:, -1]
            else:
                row_weights = current["weights"]
                captured[layer] = (hidden * row_weights[..., None]).sum(1) / row_weights.sum(1, keepdim=True)
            if layer == deepest:
                raise _StopForward
        return hook

    result = torch.empty((len(rows), len(layers), network.config.hidden_size), dtype=torch.float32)
    handles = [blocks[layer].register_forward_hook(capture(layer)) for layer in layers]
    done = 0
    try:
        for batch in _batches(len(rows), [len(row) for row in rows], batch_size):
            ids, mask, positions = left_pad([rows[index] for index in batch], pad_id)
            if weights is not None:
                current["weights"] = _right_aligned([weights[index] for index in batch], 0.0, torch.float32)
            try:
                with torch.inference_mode():
                    network.get_decoder()(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
            except _StopForward:
                pass
            for column, layer in enumerate(layers):
                result[batch, column] = captured[layer]
            done += len(batch)
            if progress is not None:
                progress(done, len(rows))
    finally:
        for handle in handles:
            handle.remove()
    return result


def greedy_continuations(network, rows: Sequence[Sequence[int]], pad_id: int, eos_id: int, max_new_tokens: int,
                         batch_size: int = 64, progress: Counter | None = None) -> list[list[int]]:
    """Greedy continuation of each token row, up to and including the end-of-turn token when one comes."""
    import torch
    from transformers import GenerationConfig

    config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos_id, pad_token_id=pad_id)
    continuations: list[list[int]] = [[] for _ in rows]
    done = 0
    for batch in _batches(len(rows), [len(row) for row in rows], batch_size):
        ids, mask, _ = left_pad([rows[index] for index in batch], pad_id)
        with torch.inference_mode():
            output = network.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        for row, index in enumerate(batch):
            tokens = output[row, ids.shape[1]:].tolist()
            continuations[index] = tokens[:tokens.index(eos_id) + 1] if eos_id in tokens else tokens
        done += len(batch)
        if progress is not None:
            progress(done, len(rows))
    return continuations


def continuation_scores(network, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
                        pad_id: int, steer: Sequence[tuple[int, object] | None] | None = None, batch_size: int = 32,
                        progress: Counter | None = None):
    """Per row: (mean log-probability of the continuation's tokens after the prompt, share of those tokens that are
    the model's greedy choice), teacher-forced.

    ``steer`` gives each row ``(layer, vector)`` to add to that block's output, or None to leave the row unsteered:
    rows steered at different layers or by different vectors share batches.
    """
    import torch

    scores: list[tuple[float, float]] = [(0.0, 0.0)] * len(prompts)
    rows = [list(prompt) + list(continuation) for prompt, continuation in zip(prompts, continuations)]
    done = 0
    for batch in _batches(len(rows), [len(row) for row in rows], batch_size):
        ids, mask, positions = left_pad([rows[index] for index in batch], pad_id)
        keep = max(len(continuations[index]) for index in batch) + 1
        with ExitStack() as stack, torch.inference_mode():
            for layer in sorted({steer[index][0] for index in batch if steer and steer[index] is not None}):
                vectors = torch.zeros((len(batch), 1, network.config.hidden_size))
                for row, index in enumerate(batch):
                    if steer[index] is not None and steer[index][0] == layer:
                        vectors[row, 0] = steer[index][1]
                stack.enter_context(steering(network, layer, vectors))
            logits = network(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False,
                             logits_to_keep=keep).logits.float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)  # position t predicts column t + 1 of the last `keep`
        targets = ids[:, -keep + 1:]
        picked = logprobs.gather(-1, targets[..., None])[..., 0]
        greedy = logprobs.argmax(-1) == targets
        for row, index in enumerate(batch):
            length = len(continuations[index])
            scores[index] = (picked[row, -length:].mean().item(), greedy[row, -length:].float().mean().item())
        done += len(batch)
        if progress is not None:
            progress(done, len(rows))
    return scores
