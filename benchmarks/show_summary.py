"""One line per run folder: the numbers of its summary.json that matter when comparing recipes."""

import json
import sys
from pathlib import Path

for folder in sys.argv[1:]:
    for path in sorted(Path(folder).glob("version_*/summary.json")):
        s = json.loads(path.read_text())
        curve = " ".join(f"{v:.3f}" for v in s["val_acc_per_epoch"] if v is not None)
        print(f"{folder}: reached={s['target_reached']} epoch={s['target_epoch']} "
              f"to_target={s['target_seconds'] and round(s['target_seconds'], 2)}s train={s['train_seconds']:.2f}s "
              f"warmup={s['warmup_seconds']:.1f}s total={s['total_seconds']:.1f}s test={s['test_acc']:.4f} "
              f"tta={s.get('test_acc_tta')} img/s={s['images_per_second'] and round(s['images_per_second'])} "
              f"mem={s['peak_gpu_memory_mb'] and round(s['peak_gpu_memory_mb'])}MB | {curve}")
