"""A short meta-training run on the real Omniglot data reaches clearly above chance.

5-way 5-shot with the paper's Omniglot settings (train-shots 10, 5 Adam steps on batches
of 10, meta-batch 5, outer step 1 annealed to 0), cut to 80 meta-iterations so that it fits
in CI; then the paper's non-transductive evaluation on 200 meta-test tasks (with 10 instead
of 50 adaptation steps, again for time). Chance is 20%; the paper reaches 98.9% after
100,000 iterations. Measured here: about 70-76% (see the README).
"""
import numpy as np

from conftest import OMNIGLOT_DIR
from reptile_np import models
from reptile_np.data.omniglot import load_omniglot
from reptile_np.evaluate import evaluate
from reptile_np.train import TrainConfig, make_optimizer, meta_train


def test_short_omniglot_run_beats_chance_by_far(omniglot_cache):
    splits = load_omniglot(OMNIGLOT_DIR, cache_dir=omniglot_cache)
    config = TrainConfig(num_classes=5, num_shots=5, train_shots=10, inner_batch_size=10,
                         inner_iters=5, learning_rate=0.001, meta_step_size=1.0,
                         meta_step_size_final=0.0, meta_batch_size=5, meta_iters=80,
                         eval_batch_size=5, eval_iters=10, eval_interval=10 ** 9)
    model = models.omniglot_cnn(5)
    optimizer = make_optimizer(config, model.num_params, np.float32)
    theta = meta_train(model, model.init(np.random.default_rng(0)), optimizer, splits, config)
    accuracy, ci95, per_task = evaluate(model, theta, optimizer, splits["test"], 5, 5,
                                        config.eval_batch_size, config.eval_iters, 200,
                                        np.random.default_rng(1))
    print(f"non-transductive 5-way 5-shot after 80 meta-iterations: {accuracy:.3f} ± {ci95:.3f}")
    assert len(per_task) == 200
    assert accuracy >= 0.60
