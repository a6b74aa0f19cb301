"""Differential privacy on the node: one home for plans, mechanisms, unit datasets and the account.

- :mod:`client.privacy.plan`: the run-long plan (noise multiplier for the whole run) and the budget guard;
- :mod:`client.privacy.samples`: datasets whose samples are privacy units (users or interactions);
- :mod:`client.privacy.dpsgd`: DP-SGD through Opacus (the one call into Opacus);
- :mod:`client.privacy.account`: the node's plan, spent history and signed ledger for one run.

Privacy randomness (noise, Poisson sampling, subsampling) comes from
:class:`shared.secret_random.SecretRandomness`: fresh OS entropy per round, never the run seed.
"""

from client.privacy.account import PrivacyAccount
from client.privacy.dpsgd import PrivateParts, make_private, train_private
from client.privacy.plan import DPPlan, PlanError, plan_for, refusal

__all__ = ["DPPlan", "PlanError", "PrivacyAccount", "PrivateParts", "make_private", "plan_for", "refusal",
           "train_private"]
