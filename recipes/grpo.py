"""GRPO-style RL post-training with the prompt budget allocated across sources. Usage:

python recipes/grpo.py --config recipes/grpo_uniform.yaml [--field value ...]
accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/grpo.py --config recipes/grpo_dataprophet.yaml
"""

from mixwise.recipes import main_grpo

if __name__ == "__main__":
    main_grpo()
