"""Fine-tuning: training data, the LoRA trainer and its in-training defenses."""
