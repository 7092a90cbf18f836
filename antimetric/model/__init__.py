"""The network: its names and settings, the backbones, the trunk and batched branches (and the seed-style reference
loop), the device plan, what an ensemble costs. Import from the module that defines a name; this package imports
nothing, so that reading the model's settings (every command does) loads no torch."""
