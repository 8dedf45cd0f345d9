"""Training MEND's hypernetwork (``robustedit train mend`` / ``mend+sss``).

One step takes ``batch_size`` training edits, records their gradient factors on the unedited
model, turns them into one joint update ΔW through the hypernetwork and scores the edited model
W + ΔW functionally (``torch.func.functional_call``, in place of the reference's ``higher``):

    L = c_e · NLL(target_new | rephrase [and edit prompt]; W + ΔW) + c_loc · KL(p_W ‖ p_{W+ΔW} on loc)

(the reference's loss, c_e = 0.1, c_loc = 1). The locality KL is averaged over every position of
an unrelated question followed by its answer (the file's ``loc`` / ``loc_ans``). With SSS
(``mend+sss``) the loss becomes (1 − C)·L + C·λ_max, λ_max of the edit prompt on the edited model,
so the hypernetwork learns updates that leave the edit example in a semantically sparse region;
that needs a double backward through the edited forward. Gradients reach only the hypernetwork:
the factors are recorded once per step and treated as data, as in the reference.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robustedit.data import Case, load_cases
from robustedit.editors.mend import MENDConfig, build_net, edit_factors
from robustedit.editors.sss import SSSConfig, TeacherForced, edit_loss_and_sss, forward, per_example_nll, teacher_forced
from robustedit.errors import UserError
from robustedit.models.load import LanguageModel
from robustedit.request import EditRequest
from robustedit.training.loop import batch_indices, split_cases


@dataclass(frozen=True)
class Example:
    """What one training case contributes: the edit, where it must generalise, what must not move."""

    request: EditRequest
    rephrase: str
    loc_prompt: str
    loc_answer: str

    @property
    def prompt(self) -> str:
        return self.request.text

    @property
    def target(self) -> str:
        return self.request.target_new


def examples(cases: list[Case]) -> list[Example]:
    out = []
    for c in cases:
        if not c.neighborhood_prompts or not c.neighborhood_answer:
            continue
        r = c.request
        out.append(Example(r, (c.paraphrase_prompts or (r.text,))[0],
                           c.neighborhood_prompts[0], c.neighborhood_answer))
    return out


def kl_on_positions(base_logits: torch.Tensor, new_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked positions of KL(softmax(base) ‖ softmax(new))."""
    base = F.log_softmax(base_logits.float(), -1)
    new = F.log_softmax(new_logits.float(), -1)
    kl = (base.exp() * (base - new)).sum(-1)
    return (kl * mask).sum() / mask.sum()


def token_accuracy(logits: torch.Tensor, tf: TeacherForced, reference: torch.Tensor | None = None) -> torch.Tensor:
    """Per example, the share of target positions whose argmax is the target token (or, with
    ``reference`` logits, the reference's argmax: EasyEdit's locality)."""
    picked = logits[tf.target_row, tf.target_pos].argmax(-1)
    goal = tf.target_tok if reference is None else reference[tf.target_row, tf.target_pos].argmax(-1)
    hits = (picked == goal).float()
    n = logits.shape[0]
    return hits.new_zeros(n).index_add(0, tf.target_row, hits) / hits.new_zeros(n).index_add(0, tf.target_row, torch.ones_like(hits))


class MENDTask:
    """The :class:`~robustedit.training.loop.TrainTask` of MEND (and MEND + SSS)."""

    def __init__(self, lm: LanguageModel, cfg: MENDConfig, editor: str) -> None:
        self.lm, self.cfg, self.editor = lm, cfg, editor
        self.train_cfg = cfg.train
        self.sss: SSSConfig | None = getattr(cfg, "sss", None)
        train, val = split_cases(examples(load_cases(cfg.train.dataset)), cfg.train.val_fraction)
        if not train:
            raise UserError(f"{cfg.train.dataset} has no cases with locality prompts to train MEND on")
        self.train, self.val = train, val[: cfg.train.val_cases]
        torch.manual_seed(cfg.train.seed)
        self.module, self.modules = build_net(lm, cfg)
        self.names = list(self.modules)
        self.base = {n: m.weight for n, m in self.modules.items()}
        self.optimizer = torch.optim.Adam([
            {"params": [p for n, p in self.module.named_parameters() if n != "lrs"], "lr": cfg.train.lr},
            {"params": [self.module.lrs], "lr": cfg.train.lr_lr}])
        self._warm_up_norms()

    def _warm_up_norms(self) -> None:
        """Give the running standardisation its first statistics (it needs two vectors) from one
        batch, so that step 0 trains on standardised factors like every later step."""
        batch = [self.train[i] for i in batch_indices(len(self.train), self.train_cfg.batch_size, 0, self.train_cfg.seed)]
        factors = self._factors(batch)
        with torch.no_grad():
            for name in self.names:
                t = self.module.transform(name)
                keep = (factors[name].u != 0).any(-1) & (factors[name].delta != 0).any(-1)
                t.u_norm.update(factors[name].u[keep].float())
                t.delta_norm.update(factors[name].delta[keep].float())

    def _factors(self, batch: list[Example]):
        return edit_factors(self.lm, self.modules, [e.request for e in batch])

    def _edited(self, batch: list[Example]) -> dict[str, torch.Tensor]:
        updates = self.module.updates(self._factors(batch), self.lm.spec.stored)
        return {n: self.base[n] + updates[n].to(self.base[n].dtype) for n in self.names}

    def _losses(self, batch: list[Example], weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        lm, tc = self.lm, self.train_cfg
        prompts = [e.rephrase for e in batch] + ([e.prompt for e in batch] if tc.edit_loss_on == "both" else [])
        targets = [e.target for e in batch] * (2 if tc.edit_loss_on == "both" else 1)
        edit_tf = teacher_forced(lm, prompts, targets)
        edit_logits = forward(lm, weights, input_ids=edit_tf.batch.input_ids,
                              attention_mask=edit_tf.batch.attention_mask, use_cache=False).logits
        loc_tf = teacher_forced(lm, [e.loc_prompt for e in batch], [e.loc_answer for e in batch])
        loc_inputs = dict(input_ids=loc_tf.batch.input_ids, attention_mask=loc_tf.batch.attention_mask, use_cache=False)
        with torch.no_grad():
            base_logits = lm.model(**loc_inputs).logits
        new_logits = forward(lm, weights, **loc_inputs).logits
        out = {"edit": per_example_nll(edit_logits, edit_tf).mean(),
               "loc": kl_on_positions(base_logits, new_logits, loc_tf.batch.attention_mask)}
        out["total"] = tc.edit_weight * out["edit"] + tc.loc_weight * out["loc"]
        return out

    def train_step(self, step: int) -> dict[str, float]:
        tc = self.train_cfg
        batch = [self.train[i] for i in batch_indices(len(self.train), tc.batch_size, step, tc.seed)]
        weights = self._edited(batch)
        losses = self._losses(batch, weights)
        loss = losses["total"]
        logged = {"loss": float(loss.detach()), "edit_nll": float(losses["edit"].detach()),
                  "loc_kl": float(losses["loc"].detach())}
        if self.sss is not None:
            edit_tf = teacher_forced(self.lm, [e.prompt for e in batch], [e.target for e in batch])
            _, lam = edit_loss_and_sss(self.lm, edit_tf, self.sss, weights)
            loss = (1 - self.sss.coefficient) * loss + self.sss.coefficient * lam
            logged["sss"] = float(lam.detach())
        self.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), tc.grad_clip)
        self.optimizer.step()
        logged["alpha"] = float(self.module.lrs.detach().mean())
        return logged

    def validate(self) -> dict[str, float]:
        """Each validation case edited alone (as at test time): token accuracy of the target on
        the edit prompt and its rephrase, agreement with the unedited model on the loc question."""
        lm, rows = self.lm, []
        for e in self.val:
            weights = {n: w.detach() for n, w in self._edited([e]).items()}
            with torch.no_grad():
                tf = teacher_forced(lm, [e.prompt, e.rephrase], [e.target, e.target])
                logits = forward(lm, weights, input_ids=tf.batch.input_ids,
                                 attention_mask=tf.batch.attention_mask, use_cache=False).logits
                loc = teacher_forced(lm, [e.loc_prompt], [e.loc_answer])
                inputs = dict(input_ids=loc.batch.input_ids, attention_mask=loc.batch.attention_mask, use_cache=False)
                base, new = lm.model(**inputs).logits, forward(lm, weights, **inputs).logits
                edit_acc, rephrase_acc = token_accuracy(logits, tf).tolist()
                rows.append({"edit_acc": edit_acc, "rephrase_acc": rephrase_acc,
                             "loc_acc": float(token_accuracy(new, loc, base)[0]),
                             "edit_nll": float(per_example_nll(logits, tf)[0]),
                             "loc_kl": float(kl_on_positions(base, new, loc.batch.attention_mask))})
        return {f"val_{k}": sum(r[k] for r in rows) / len(rows) for k in rows[0]}

    def export(self):
        return self.module.state_dict(), {"editor": self.editor, "model": self.lm.name,
                                          "fingerprint": self.lm.fingerprint,
                                          "config": dataclasses.asdict(self.cfg),
                                          "weights": self.names, "n_train": len(self.train), "n_val": len(self.val)}
