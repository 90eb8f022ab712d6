"""`mixwise sft` as a script, for launchers that want a file (the recipes themselves ship in the package: see
`mixwise recipes`). Usage:

accelerate launch --config_file multi_gpu.yaml recipes/sft.py --config sft_dataprophet.yaml [--field value ...]
"""

from mixwise.recipes import main_sft

if __name__ == "__main__":
    main_sft()
