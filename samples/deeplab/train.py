"""Train the sample DeepLab v3 on synthetic shapes, report held-out mean IoU, write checkpoint + model.json.

    .venv/bin/python samples/deeplab/train.py --out samples/deeplab/checkpoint [--images samples/images]

Runs on CPU (two threads by default) in a few minutes; every seed is fixed and recorded in model.json, so a
re-run reproduces the data sets (weights agree up to float non-determinism of threaded kernels).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from tfsctl.models.deeplab import CHECKPOINT_PREFIX, DeepLabConfig, build_deeplab, checkpoint_for  # noqa: E402
from tfsctl.models.shapes import CLASS_IDS, confusion_matrix, make_dataset, make_example, mean_iou  # noqa: E402
from tfsctl.voc import VOC_CLASSES, voc_palette  # noqa: E402

TRAIN_SEED, EVAL_SEED, SAMPLE_SEED, INIT_SEED = 1, 2, 3, 4
SAMPLE_IMAGES = (("shapes_256.png", 256, 256), ("shapes_320x240.jpg", 240, 320),
                 ("shapes_200x300.png", 300, 200), ("shapes_512x384.jpg", 384, 512))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "checkpoint")
    p.add_argument("--images", type=Path, default=None, help="also write the sample images here")
    p.add_argument("--steps", type=int, default=900)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--train-count", type=int, default=1200)
    p.add_argument("--eval-count", type=int, default=200)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-miou", type=float, default=0.8, help="exit 1 when held-out mIoU is below this")
    return p.parse_args()


def evaluate(model: keras.Model, images: np.ndarray, labels: np.ndarray, batch: int = 25) -> np.ndarray:
    conf = np.zeros((21, 21), np.int64)
    for i in range(0, len(images), batch):
        logits = model(images[i:i + batch].astype(np.float32), training=False)
        conf += confusion_matrix(labels[i:i + batch], np.argmax(logits, axis=-1), 21)
    return conf


def write_samples(out_dir: Path) -> None:
    """Sample images from a held-out seed, plus their ground-truth label maps (palette PNG) under labels/."""
    rng = np.random.default_rng(SAMPLE_SEED)
    (out_dir / "labels").mkdir(parents=True, exist_ok=True)
    palette = voc_palette(256).ravel().tolist()
    for name, h, w in SAMPLE_IMAGES:
        img, lab = make_example(rng, h, w, max_shapes=max(3, h * w // 12000))
        path = out_dir / name
        Image.fromarray(img).save(path, **({"quality": 92} if path.suffix == ".jpg" else {}))
        label_img = Image.fromarray(lab, mode="P")
        label_img.putpalette(palette)
        label_img.save(out_dir / "labels" / (Path(name).stem + ".png"))
        print(f"wrote {path} ({w}x{h})")


def main() -> int:
    args = parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    keras.utils.set_random_seed(INIT_SEED)

    if args.images:
        write_samples(args.images)

    t0 = time.time()
    train_x, train_y = make_dataset(TRAIN_SEED, args.train_count, args.crop, args.crop)
    eval_x, eval_y = make_dataset(EVAL_SEED, args.eval_count, args.crop, args.crop)
    print(f"data: {len(train_x)} train / {len(eval_x)} eval images {args.crop}x{args.crop} "
          f"in {time.time() - t0:.1f}s", flush=True)

    config = DeepLabConfig(class_ids=list(CLASS_IDS), crop_size=[args.crop, args.crop])
    model = build_deeplab(config)
    schedule = keras.optimizers.schedules.CosineDecay(args.lr, args.steps, alpha=0.02,
                                                      warmup_target=None, warmup_steps=0)
    optimizer = keras.optimizers.Adam(schedule)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def train_step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    rng = np.random.default_rng(TRAIN_SEED + 100)
    t0 = time.time()
    running = 0.0
    for step in range(1, args.steps + 1):
        idx = rng.integers(0, len(train_x), args.batch)
        x, y = train_x[idx], train_y[idx]
        if rng.random() < 0.5:
            x, y = x[:, :, ::-1], y[:, :, ::-1]
        if rng.random() < 0.5:
            x, y = x[:, ::-1], y[:, ::-1]
        loss = float(train_step(tf.constant(x.astype(np.float32)), tf.constant(y.astype(np.int32))))
        running = loss if step == 1 else 0.95 * running + 0.05 * loss
        if step % 50 == 0 or step == args.steps:
            print(f"step {step:5d}/{args.steps}  loss {running:.4f}  {time.time() - t0:6.1f}s", flush=True)
    train_seconds = time.time() - t0

    conf = evaluate(model, eval_x, eval_y)
    miou, per_class = mean_iou(conf, CLASS_IDS)
    for c, iou in per_class.items():
        print(f"  IoU {VOC_CLASSES[c]:<12s} {iou:.4f}")
    print(f"held-out mean IoU over {len(per_class)} classes: {miou:.4f}")

    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob(f"{CHECKPOINT_PREFIX}*"):
        old.unlink()
    checkpoint_for(model).write(str(args.out / CHECKPOINT_PREFIX))
    config.training = {"steps": args.steps, "batch_size": args.batch, "optimizer": "adam",
                       "learning_rate": args.lr, "schedule": "cosine_decay(alpha=0.02)",
                       "loss": "sparse_categorical_crossentropy", "augmentation": "random horizontal/vertical flip",
                       "init_seed": INIT_SEED, "threads": args.threads, "train_seconds": round(train_seconds, 1)}
    config.dataset = {"generator": "tfsctl.models.shapes", "train_seed": TRAIN_SEED, "train_count": args.train_count,
                      "eval_seed": EVAL_SEED, "eval_count": args.eval_count, "sample_seed": SAMPLE_SEED,
                      "image_size": [args.crop, args.crop],
                      "classes": {str(c): VOC_CLASSES[c] for c in CLASS_IDS}}
    config.metrics = {"eval_mean_iou": round(miou, 4),
                      "eval_iou_per_class": {VOC_CLASSES[c]: round(v, 4) for c, v in per_class.items()}}
    config.save(args.out)
    print(f"wrote {args.out / CHECKPOINT_PREFIX}.* and {args.out / 'model.json'}")
    print(json.dumps(config.metrics))
    if miou < args.min_miou:
        print(f"mean IoU {miou:.4f} is below the target {args.min_miou}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
