# SAM with the Hugging Face Trainer and gradient_accumulation_steps=4: swap Trainer for SAMTrainer.
import sys

import torch
from transformers import BertConfig, BertForQuestionAnswering, TrainingArguments

from sam.hf import SAMTrainer

torch.manual_seed(0)  # a tiny random BERT-QA and random data: runs offline in seconds
config = BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
model = BertForQuestionAnswering(config)
ids, spans = torch.randint(0, 40, (32, 12)), torch.randint(0, 12, (32, 2))
data = [{"input_ids": i, "start_positions": s[0], "end_positions": s[1]} for i, s in zip(ids, spans)]

args = TrainingArguments(
    output_dir=sys.argv[1] if len(sys.argv) > 1 else "sam-trainer-out",
    per_device_train_batch_size=2,
    gradient_accumulation_steps=4,
    learning_rate=1e-3,
    num_train_epochs=1,
    max_grad_norm=1.0,  # clips the second-pass gradient, the one the optimizer steps with
    report_to="none",
    use_cpu=True,  # drop on a GPU; fp16=True / bf16=True work as with Trainer
)
trainer = SAMTrainer(model=model, args=args, train_dataset=data, rho=0.05, replay="full")
trainer.train()
