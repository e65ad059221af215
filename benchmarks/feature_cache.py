"""Phase-1 transfer learning of ResNet50: head on cached features vs through the frozen backbone.

  python benchmarks/feature_cache.py [--data_dir=../shared/data/chest_xray_224] [--image_size=224]
      [--weights=../shared/weights/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5] [--quick]

On the real train split (patient-grouped validation carved out, as in a run), this times
(a) one epoch of `fit` through the frozen backbone (the baseline) and (b) the feature cache:
one backbone pass over the train images, then head epochs on the features. Phase 1 of
experiments/resnet50.cfg runs 5 head epochs; the speed-up for E epochs is
E x epoch(a) / (extraction + E x head epoch), with (a) measured once and scaled by E
(the backbone's cost is the same every epoch). Writes results/feature_cache.json.
"""

import argparse
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

WEIGHTS = os.path.join(
  os.path.dirname(common.SHARED_DATA.rstrip("/")),
  "..",
  "weights",
  "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", default=common.REAL_DATA)
  parser.add_argument("--weights", default=os.path.normpath(WEIGHTS))
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--head_epochs", type=int, default=5)
  parser.add_argument("--quick", action="store_true", help="16 images per class at 32px, for tests")
  parser.add_argument("--output", default=None)
  args = parser.parse_args()

  import keras
  import numpy as np

  from xray_keras import models
  from xray_keras.data import feeder, loader
  from xray_keras.training import transfer

  size = 32 if args.quick else args.image_size
  config = loader.DataConfig(
    data_dir=args.data_dir, image_size=size, channels=1, max_images_per_split=16 if args.quick else 0
  )
  data = loader.load(config)
  train = data.splits["train"]
  images, labels = train.images, train.labels
  weights = feeder.class_weights(labels)

  def compiled(model):
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    return model

  # (a) Baseline: one epoch through the frozen backbone (plus a 1-batch warm-up for tracing).
  model = models.build_model("resnet50", (size, size, 1), weights=args.weights)
  transfer.freeze_backbone(model)
  compiled(model)
  ds = feeder.make_feeder(images, labels, args.batch_size, True, seed=0)
  model.fit(images[: args.batch_size], labels[: args.batch_size].astype("float32"), verbose=0)
  start = time.perf_counter()
  model.fit(ds, epochs=1, class_weight=weights, verbose=0, shuffle=False)
  through_epoch_s = time.perf_counter() - start

  # (b) Feature cache: one backbone pass, then head epochs on features.
  model = models.build_model("resnet50", (size, size, 1), weights=args.weights)
  transfer.freeze_backbone(model)
  start = time.perf_counter()
  features = transfer.extract_features(model, images, args.batch_size)
  extraction_s = time.perf_counter() - start
  head = compiled(transfer.head(model))
  head_ds = feeder.make_feeder(features, labels, args.batch_size, True, seed=0)
  head.fit(features[: args.batch_size], labels[: args.batch_size].astype("float32"), verbose=0)
  start = time.perf_counter()
  head.fit(head_ds, epochs=args.head_epochs, class_weight=weights, verbose=0, shuffle=False)
  head_epoch_s = (time.perf_counter() - start) / args.head_epochs

  rows = []
  for epochs in sorted({1, args.head_epochs, 10}):
    through = epochs * through_epoch_s
    cached = extraction_s + epochs * head_epoch_s
    rows.append(
      {"head_epochs": epochs, "through_backbone_s": through, "feature_cache_s": cached, "speedup": through / cached}
    )
  payload = {
    "model": "ResNet50",
    "weights": os.path.basename(args.weights),
    "image_size": size,
    "train_images": int(len(images)),
    "batch_size": args.batch_size,
    "backend": keras.backend.backend(),
    "quick": args.quick,
    "through_backbone_epoch_s": through_epoch_s,
    "through_backbone_images_per_s": len(images) / through_epoch_s,
    "feature_extraction_s": extraction_s,
    "feature_extraction_images_per_s": len(images) / extraction_s,
    "head_epoch_on_features_s": head_epoch_s,
    "feature_shape": list(np.shape(features)[1:]),
    "rows": rows,
    "data": {**dataclasses.asdict(config), "data_dir": os.path.basename(os.path.normpath(args.data_dir))},
  }
  path = common.write_result("feature_cache", payload, args.output)
  for r in rows:
    print(
      f"{r['head_epochs']:>2} head epochs: through backbone {r['through_backbone_s']:.1f}s, "
      f"feature cache {r['feature_cache_s']:.1f}s, speed-up x{r['speedup']:.1f}"
    )
  print(f"Wrote {path}")


if __name__ == "__main__":
  main()
