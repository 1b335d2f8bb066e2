"""recbole-srt: the Scalable Recommendation Transformer (SRT) as a RecBole plugin.

``import recbole_srt`` checks the dependency stack, patches what RecBole 1.2.1 needs on it
(:mod:`recbole_srt.compat`) and registers SRT with RecBole (:mod:`recbole_srt.registration`):
from then on ``run_recbole(model="SRT")``, ``load_data_and_model`` and ``objective_function``
find it by name.
"""

from recbole_srt import compat, registration

compat.apply()
registration.register()

from recbole_srt.model.srt import SRT  # noqa: E402

__all__ = ["SRT"]
