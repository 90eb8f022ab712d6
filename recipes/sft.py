"""SFT on a selected mixture. Usage:

python recipes/sft.py --config recipes/sft_uniform.yaml [--field value ...]
accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/sft.py --config recipes/sft_dataprophet.yaml
"""

from mixwise.recipes import main_sft

if __name__ == "__main__":
    main_sft()
