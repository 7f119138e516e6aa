"""Training throughput: our full loss vs a plain TFRS in-batch retrieval model.

Both models have the same towers (same config, same sizes), train on the same
ml-100k batches with the same batch size and optimizer, in one process; timing
rounds alternate between them so machine noise hits both alike. Ours adds the
streaming frequency estimator update + logQ correction, accidental-hit removal
and the NTR term; the reference is ``tfrs.tasks.Retrieval`` (in-batch softmax).

Usage: python -m bench.training_speed [--rounds 5] [--steps 40] [--batch-size 1024]
Writes bench/results/training_speed.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from bench.common import SHARED_DATA, write_result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=40, help="train steps per model per round")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--encoder", default="mean", choices=["mean", "gru", "attention"])
    args = p.parse_args(argv)

    import importlib

    from trainer._tf import keras, tf  # sets TF_USE_LEGACY_KERAS before TFRS imports Keras
    from trainer.data.examples import build_train_examples
    from trainer.data.sources import load_source
    from trainer.model import TwoTowerModel
    from trainer.run import trainer_config
    from trainer.towers import ItemTower, UserTower

    tfrs = importlib.import_module("tensorflow_recommenders")
    spec = f"movielens:{SHARED_DATA / 'ml-100k' / 'u.data'}"
    ds = load_source(spec)
    cfg = trainer_config(
        "movielens",
        overrides=[f"model.encoder={args.encoder}", f"train.batch_size={args.batch_size}"],
    )
    ex = build_train_examples(ds, cfg.model.history_length, cfg.model.dislike_length)
    keras.utils.set_random_seed(0)

    class PlainTFRS(tfrs.Model):
        def __init__(self) -> None:
            super().__init__()
            self.item_tower = ItemTower(
                ds.num_items, cfg.model, ds.item_features, ds.item_feature_sizes
            )
            self.user_tower = UserTower(self.item_tower.id_embedding, cfg.model)
            self.task = tfrs.tasks.Retrieval()

        def compute_loss(self, features, training=False):
            u = tf.math.l2_normalize(
                self.user_tower((features["history"], features["dislikes"]), training=training), -1
            )
            v = tf.math.l2_normalize(self.item_tower(features["item"], training=training), -1)
            return self.task(u / cfg.loss.temperature, v, compute_metrics=False)

    ours = TwoTowerModel(cfg, ds.num_items, ds.item_features, ds.item_feature_sizes)
    plain = PlainTFRS()
    models = {"ours_streaming_logq_ntr": ours, "plain_tfrs_in_batch": plain}
    steps = {}
    for name, model in models.items():
        opt = keras.optimizers.Adam(cfg.train.learning_rate)

        def make(model=model, opt=opt):
            @tf.function
            def step(batch):
                with tf.GradientTape() as tape:
                    loss = model.compute_loss(batch, training=True)
                grads = tape.gradient(loss, model.trainable_variables)
                opt.apply_gradients(
                    [
                        (g, v)
                        for g, v in zip(grads, model.trainable_variables, strict=True)
                        if g is not None
                    ]
                )
                return loss

            return step

        steps[name] = make()

    rng = np.random.default_rng(0)
    n = args.batch_size

    def batch():
        rows = rng.integers(0, len(ex), n)
        return {
            "history": tf.constant(ex.history[rows]),
            "dislikes": tf.constant(ex.dislikes[rows]),
            "item": tf.constant(ex.item[rows]),
            "is_positive": tf.constant(ex.is_positive[rows]),
            "weight": tf.constant(ex.weight[rows]),
        }

    batches = [batch() for _ in range(args.steps)]
    for step in steps.values():  # trace + warm up
        for b in batches[:3]:
            step(b)
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(args.rounds):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))
        for name in order:
            t0 = time.perf_counter()
            for b in batches:
                steps[name](b).numpy()
            rates[name].append(args.steps * n / (time.perf_counter() - t0))
    summary = {
        name: {"median_examples_per_s": statistics.median(v), "rounds": v}
        for name, v in rates.items()
    }
    ratio = (
        summary["ours_streaming_logq_ntr"]["median_examples_per_s"]
        / summary["plain_tfrs_in_batch"]["median_examples_per_s"]
    )
    doc = {
        "data": spec,
        "batch_size": n,
        "encoder": args.encoder,
        "steps_per_round": args.steps,
        "threads": {
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
            "note": "TensorFlow defaults (0 = all cores)",
        },
        "results": summary,
        "ratio_ours_over_plain": ratio,
    }
    path = write_result(
        f"training_speed_{args.encoder}", doc, packages=("tensorflow", "tensorflow-recommenders")
    )
    for name, s in summary.items():
        print(f"{name:>26}: {s['median_examples_per_s']:,.0f} examples/s")
    print(f"ours / plain TFRS = {ratio:.2f}")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
