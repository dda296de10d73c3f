"""Few-shot data: splits as `ClassImages`, task sampling, and the data set loaders."""
from reptile_np.data.fetch import default_data_dir, fetch_omniglot
from reptile_np.data.folder import load_folder
from reptile_np.data.miniimagenet import load_miniimagenet
from reptile_np.data.omniglot import load_omniglot
from reptile_np.data.synthetic import load_synthetic, make_synthetic
from reptile_np.data.tasks import ClassImages, sample_task, split_eval_task

__all__ = [
    "ClassImages", "default_data_dir", "fetch_omniglot", "load_folder", "load_miniimagenet",
    "load_omniglot", "load_synthetic", "make_synthetic", "sample_task", "split_eval_task",
]
