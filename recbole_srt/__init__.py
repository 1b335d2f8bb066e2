"""recbole-srt: the Scalable Recommendation Transformer (SRT) as a RecBole plugin.

``import recbole_srt`` checks that RecBole 1.2.1 is installed (:mod:`recbole_srt.stack`), patches what
it needs on today's stack (:mod:`recbole_srt.compat`) and registers SRT and its trainer with RecBole
(:mod:`recbole_srt.registration`): from then on ``run_recbole(model="SRT")``, ``get_trainer``,
``load_data_and_model`` and ``objective_function`` find them by name.
"""

from recbole_srt.stack import check_stack

check_stack()  # before RecBole is imported: without it, one message saying how to install it

from recbole_srt import compat  # noqa: E402

compat.apply()

from recbole_srt import registration  # noqa: E402

registration.register()

from recbole_srt.encoder import ItemEncoder  # noqa: E402
from recbole_srt.model.srt import SRT  # noqa: E402
from recbole_srt.pipeline import Run, RunRecord, make_config, run  # noqa: E402
from recbole_srt.serve import Recommender  # noqa: E402
from recbole_srt.trainer import SRTTrainer  # noqa: E402
from recbole_srt.transfer import finetune  # noqa: E402

__all__ = [
    "SRT",
    "ItemEncoder",
    "Recommender",
    "Run",
    "RunRecord",
    "SRTTrainer",
    "finetune",
    "make_config",
    "run",
]
