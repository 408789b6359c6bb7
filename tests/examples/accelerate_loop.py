# SAM in a plain accelerate loop: Accelerator(gradient_accumulation_steps=1), windows cut by hand, one train_step each.
# Runs as `python accelerate_loop.py` or `accelerate launch --num_processes 2 accelerate_loop.py` (add --cpu on a CPU).
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import BertConfig, BertForQuestionAnswering

from sam import SAM, train_step, windows

torch.manual_seed(0)  # a tiny random BERT-QA and random data: runs offline in seconds
config = BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
model = BertForQuestionAnswering(config)
ids, spans = torch.randint(0, 40, (32, 12)), torch.randint(0, 12, (32, 2))
data = [{"input_ids": i, "start_positions": s[0], "end_positions": s[1]} for i, s in zip(ids, spans)]

accelerator = Accelerator(gradient_accumulation_steps=1)  # the window is train_step's, not accumulate()'s
model, loader = accelerator.prepare(model, DataLoader(data, batch_size=2))  # the optimizer is not prepared
optimizer = SAM(model.parameters(), torch.optim.AdamW, rho=0.05, lr=1e-3, weight_decay=0.0)
ddp = model if accelerator.num_processes > 1 else None  # the DDP module accelerate wrapped, or one process
model.train()
for window in windows(loader, k=4):  # every rank: its 4 slices of the window's 4 global micro-batches
    result = train_step(
        lambda batch: model(**batch).loss,
        window,
        optimizer,
        replay="full",
        max_grad_norm=1.0,
        ddp=ddp,
        scaler=accelerator.scaler,  # fp16: accelerate's GradScaler, stepped once per window by train_step
    )
    accelerator.print(f"loss {result.loss:.4f}  at w + e {result.perturbed_loss:.4f}")
