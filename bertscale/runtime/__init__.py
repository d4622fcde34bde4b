"""The training runtime both jobs share: engine (DeepSpeed), loop, optimizer/schedule, tracking."""
