"""CAM methods, one module per family: ``gradient`` (Grad-CAM and its kin), ``perturbation``
(Score-CAM, Ablation-CAM), ``projection`` (Eigen-CAM), ``rollout`` (attention rollouts),
``pixel`` (pixel-level attributions: saliency, integrated gradients, SmoothGrad, occlusion…),
``guided`` (guided backpropagation, deconvolution, Guided Grad-CAM), ``fullgrad`` (FullGrad),
``lrp`` (layer-wise relevance propagation for CNNs; its rules in ``lrp_rules``), ``attnlrp``
(AttnLRP for transformers).

A new method is one class in the family's module plus one row in ``cam.registry``.
"""
