"""The model: the timm backbone (``backbone.py``), the Wide, Deep and Recurrent network (``network.py``) and
Grad-CAM saliency maps (``saliency.py``)."""
