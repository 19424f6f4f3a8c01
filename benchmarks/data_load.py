"""What the data phase does in one train.py run, with the image folder's cache already built: prepare (train.py),
set up, prepare again (Lightning, inside fit), set up again. Time the whole process, e.g.

    /usr/bin/time -v python benchmarks/data_load.py /path/to/cifar10-jpeg

and subtract the imports (`python -c "import cifar_lit.data.datamodule"`). The record is
benchmarks/results/data_load-cpu-x86-64-2-cores-2026-11-25.json.
"""

import sys

from cifar_lit.data.datamodule import ImageDataModule
from cifar_lit.data.options import DataOptions

if __name__ == "__main__":
    module = ImageDataModule(DataOptions(data_dir=sys.argv[1]))
    module.prepare_data()  # train.py
    module.setup("fit")
    module.prepare_data()  # Lightning, inside fit
    module.setup("fit")
