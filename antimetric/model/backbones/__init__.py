"""The branchable backbones: what a network must offer for the ensemble to share its first stages and batch the rest.

table.py    one row per backbone name (family, torchvision builder, ImageNet weights, feature width) and one
            layout per family (its stages in order, where the trunk may end, its classifier); imports no torch
family.py   what the model asks of a family (BackboneFamily), the families, and a named backbone built with its
            ImageNet weights and split into trunk and tail
resnet.py   the ResNet family: torchvision's ResNets, ResNeXts and wide ResNets, and the tiny one for CPUs

A backbone of a known family is one row of table.py. A new family (say ConvNeXt) is a module beside resnet.py
implementing BackboneFamily, its layout in table.py and its entry in family.py's FAMILIES.

This package imports nothing, so that reading the table (every command does) loads no torch.
"""
