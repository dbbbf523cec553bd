"""Denoisers: ``forward(x_t, t, z=None) -> x0_hat``. ``MODELS`` maps a config name to
(schema, builder(cfg, dataset, schedule))."""

from rtkrun.models import egnn, mlp, oracle, student, unet

MODELS = {
    "mog_mlp": (mlp.MogMLPConfig, mlp.build),
    "mog_oracle": (oracle.MogOracleConfig, oracle.build),
    "mog_student": (student.MogStudentConfig, student.build),
    "mog_flow_oracle": (oracle.MogFlowOracleConfig, oracle.build_flow),
    "dddm_unet": (unet.UNetConfig, unet.build),
    "egnn": (egnn.EGNNConfig, egnn.build),
}


def needs_training(model) -> bool:
    return getattr(model, "needs_training", True)
