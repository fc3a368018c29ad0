"""A literal, one-prompt implementation of LLaDA's low-confidence-remasking sampler, written straight from
the description in llada.md: full-sequence logits every step, no shortcuts. It is the test oracle for
sample.generate and the baseline bench.py measures the fast sampler against. Not used for training."""
import torch
import torch.nn.functional as F


@torch.no_grad()
def reference_generate(model, prompt, steps, gen_length, block_length, temperature=0.0,
                       remasking="low_confidence", mask_id=None, generator=None):
    mask_id = model.config.mask_token_id if mask_id is None else mask_id
    assert prompt.shape[0] == 1, "the reference decodes one prompt at a time"
    P = prompt.shape[1]
    x = torch.full((1, P + gen_length), mask_id, dtype=torch.long, device=prompt.device)
    x[:, :P] = prompt
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    for b in range(num_blocks):
        block_end = P + (b + 1) * block_length
        n_masked = int((x[:, P + b * block_length:block_end] == mask_id).sum())
        base, rem = divmod(n_masked, steps_per_block)
        k_per_step = [base + (1 if i < rem else 0) for i in range(steps_per_block)]
        for i in range(steps_per_block):
            mask_index = x == mask_id
            logits = model(x)  # (1, L, V): every position, every step
            if temperature > 0:
                u = torch.rand(logits.shape, generator=generator, dtype=torch.float64, device=x.device)
                x0 = (logits.double().exp() / (-torch.log(u)) ** temperature).argmax(-1)
            else:
                x0 = logits.argmax(-1)
            if remasking == "low_confidence":
                p = F.softmax(logits.double(), dim=-1)
                x0_p = torch.gather(p, -1, x0[..., None]).squeeze(-1)
            else:
                x0_p = torch.rand(x0.shape, generator=generator, dtype=torch.float64, device=x.device)
            x0_p[:, block_end:] = -torch.inf
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, torch.tensor(-torch.inf, dtype=torch.float64))
            if k_per_step[i] > 0:
                _, select = torch.topk(confidence[0], k=k_per_step[i])
                x[0, select] = x0[0, select]
    return x
