# SAM under torch DistributedDataParallel: `torchrun --nproc_per_node 2 ddp.py` (gloo on the CPU, nccl on GPUs).
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler
from transformers import BertConfig, BertForQuestionAnswering

from sam import SAM, train_step, windows

dist.init_process_group("gloo")
torch.manual_seed(0)  # the same tiny random BERT-QA and random data on every rank
config = BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
model = BertForQuestionAnswering(config)
ids, spans = torch.randint(0, 40, (32, 12)), torch.randint(0, 12, (32, 2))
data = [{"input_ids": i, "start_positions": s[0], "end_positions": s[1]} for i, s in zip(ids, spans)]
torch.manual_seed(dist.get_rank())  # each rank its own dropout masks

ddp = DDP(model)
optimizer = SAM(ddp.parameters(), torch.optim.AdamW, rho=0.05, lr=1e-3, weight_decay=0.0)
loader = DataLoader(data, batch_size=2, sampler=DistributedSampler(data, shuffle=False))
ddp.train()
for window in windows(loader, k=4):  # equal slices on every rank, so no sizes are needed
    result = train_step(lambda batch: ddp(**batch).loss, window, optimizer, replay="full", ddp=ddp)
    if dist.get_rank() == 0:
        print(f"loss {result.loss:.4f}  at w + e {result.perturbed_loss:.4f}  (global window, 2 all-reduces)")
# drop DDP first: freeing it after the group is destroyed can deadlock at exit in torch's gloo teardown
ddp = None  # (its Reducer holds the group's last reference and joins gloo's threads with the GIL held)
dist.destroy_process_group()
