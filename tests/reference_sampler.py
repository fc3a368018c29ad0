"""A literal implementation of LLaDA's low-confidence-remasking sampler, written straight from the description
in llada.md: full-sequence logits every step, float64 Gumbel-max noise and softmax over the whole sequence and
vocabulary, a per-row top-k loop, no shortcuts. It decodes a left-padded batch with its padding mask (LLaDA's
reference generate on the same batch), so bench.py compares the fast sampler with it at EQUAL batch. It is the
test oracle for sample.generate (identical tokens at temperature 0). Not used for training."""
import torch
import torch.nn.functional as F


@torch.no_grad()
def reference_generate(model, prompt, steps, gen_length, block_length, temperature=0.0,
                       remasking="low_confidence", mask_id=None, generator=None, attention_mask=None):
    """prompt (B, P) left-padded ids, attention_mask (B, P) 1 = real token (None: no padding) -> (B, P + gen_length)."""
    mask_id = model.config.mask_token_id if mask_id is None else mask_id
    B, P = prompt.shape
    x = torch.full((B, P + gen_length), mask_id, dtype=torch.long, device=prompt.device)
    x[:, :P] = prompt
    am = None
    if attention_mask is not None:  # the completion is always attended to
        am = torch.cat([attention_mask, attention_mask.new_ones(B, gen_length)], dim=1)
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    for b in range(num_blocks):
        block_end = P + (b + 1) * block_length
        n_masked = (x[:, P + b * block_length:block_end] == mask_id).sum(1).tolist()  # per row
        k_per_step = [[n // steps_per_block + (1 if i < n % steps_per_block else 0) for i in range(steps_per_block)]
                      for n in n_masked]  # (B, steps_per_block)
        for i in range(steps_per_block):
            mask_index = x == mask_id  # (B, L)
            logits = model(x, am)  # (B, L, V): every position, every step
            if temperature > 0:
                u = torch.rand(logits.shape, generator=generator, dtype=torch.float64, device=x.device)
                x0 = (logits.double().exp() / (-torch.log(u)) ** temperature).argmax(-1)
            else:
                x0 = logits.argmax(-1)
            if remasking == "low_confidence":
                p = F.softmax(logits.double(), dim=-1)
                x0_p = torch.gather(p, -1, x0[..., None]).squeeze(-1)  # (B, L)
            else:
                x0_p = torch.rand(x0.shape, generator=generator, dtype=torch.float64, device=x.device)
            x0_p[:, block_end:] = -torch.inf
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, -torch.inf)
            transfer = torch.zeros_like(mask_index)
            for j in range(B):
                if k_per_step[j][i] > 0:
                    _, select = torch.topk(confidence[j], k=k_per_step[j][i])
                    transfer[j, select] = True
            x[transfer] = x0[transfer]
    return x
