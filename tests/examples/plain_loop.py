# SAM over windows of k = 4 micro-batches in your own loop: one train_step per window.
import torch
from torch.utils.data import DataLoader
from transformers import BertConfig, BertForQuestionAnswering

from sam import SAM, train_step, windows

torch.manual_seed(0)  # a tiny random BERT-QA and random data: runs offline in seconds
config = BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
model = BertForQuestionAnswering(config)
ids, spans = torch.randint(0, 40, (32, 12)), torch.randint(0, 12, (32, 2))
data = [{"input_ids": i, "start_positions": s[0], "end_positions": s[1]} for i, s in zip(ids, spans)]

optimizer = SAM(model.parameters(), torch.optim.AdamW, rho=0.05, lr=1e-3, weight_decay=0.0)
model.train()
for window in windows(DataLoader(data, batch_size=2), k=4):
    result = train_step(lambda batch: model(**batch).loss, window, optimizer, replay="full", max_grad_norm=1.0)
    print(f"loss {result.loss:.4f}  at w + e {result.perturbed_loss:.4f}")
