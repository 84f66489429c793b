"""DeepMind's CIFAR networks in PyTorch with RobustBench's state_dict names (DMWideResNet,
DMPreActResNet; written here from their published definition): the reference that
hfcjax.torch_weights' conversions are held against, and torch timings in benchmarks."""

import torch
import torch.nn as nn
import torch.nn.functional as F

ACTIVATIONS = {"relu": nn.ReLU, "swish": nn.SiLU}  # swish(x) = x * sigmoid(x) = SiLU


def same_pad(x, stride):
    """TensorFlow's SAME for a 3x3 convolution: one pixel per side at stride 1, bottom/right at stride 2."""
    return F.pad(x, (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1))


class WideBlock(nn.Module):
    def __init__(self, cin, cout, stride, act):
        super().__init__()
        self.batchnorm_0, self.relu_0 = nn.BatchNorm2d(cin), act()
        self.conv_0 = nn.Conv2d(cin, cout, 3, stride, 0, bias=False)
        self.batchnorm_1, self.relu_1 = nn.BatchNorm2d(cout), act()
        self.conv_1 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, 0, bias=False) if cin != cout else None
        self.stride = stride

    def forward(self, x):
        out = self.relu_0(self.batchnorm_0(x))
        if self.shortcut is not None:
            x = out
        out = self.conv_1(self.relu_1(self.batchnorm_1(self.conv_0(same_pad(out, self.stride)))))
        return (self.shortcut(x) if self.shortcut is not None else x) + out


class Group(nn.Module):
    def __init__(self, n, cin, cout, stride, act):
        super().__init__()
        self.block = nn.Sequential(*[WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, act)
                                     for i in range(n)])

    def forward(self, x):
        return self.block(x)


class DMWideResNet(nn.Module):
    def __init__(self, classes=10, depth=28, width=10, activation="relu", mean=(0.4914, 0.4822, 0.4465),
                 std=(0.2471, 0.2435, 0.2616), padding=0):
        super().__init__()
        act, n, widths = ACTIVATIONS[activation], (depth - 4) // 6, (16, 16 * width, 32 * width, 64 * width)
        self.register_buffer("mean", torch.tensor(mean).view(3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(3, 1, 1))
        self.padding = padding
        self.init_conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.layer = nn.Sequential(*[Group(n, widths[i], widths[i + 1], (1, 2, 2)[i], act) for i in range(3)])
        self.batchnorm, self.relu = nn.BatchNorm2d(widths[3]), act()
        self.logits = nn.Linear(widths[3], classes)
        self.channels = widths[3]

    def forward(self, x):
        if self.padding:
            x = F.pad(x, (self.padding,) * 4)
        out = self.layer(self.init_conv((x - self.mean) / self.std))
        out = F.avg_pool2d(self.relu(self.batchnorm(out)), 8)
        return self.logits(out.view(-1, self.channels))


class PreActBlock(nn.Module):
    def __init__(self, cin, cout, stride, act):
        super().__init__()
        self.stride = stride
        self.batchnorm_0, self.relu_0 = nn.BatchNorm2d(cin), act()
        self.conv_2d_1 = nn.Conv2d(cin, cout, 3, stride, 0, bias=False)
        self.batchnorm_1, self.relu_1 = nn.BatchNorm2d(cout), act()
        self.conv_2d_2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.has_shortcut = stride != 1 or cin != cout
        if self.has_shortcut:
            self.shortcut = nn.Conv2d(cin, cout, 3, stride, 0, bias=False)

    def forward(self, x):
        out = self.relu_0(self.batchnorm_0(x))
        shortcut = self.shortcut(same_pad(x, self.stride)) if self.has_shortcut else x
        out = self.conv_2d_2(self.relu_1(self.batchnorm_1(self.conv_2d_1(same_pad(out, self.stride)))))
        return out + shortcut


class DMPreActResNet(nn.Module):
    def __init__(self, classes=10, blocks=(2, 2, 2, 2), activation="relu", mean=(0.4914, 0.4822, 0.4465),
                 std=(0.2471, 0.2435, 0.2616), padding=0):
        super().__init__()
        act = ACTIVATIONS[activation]
        self.register_buffer("mean", torch.tensor(mean).view(3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(3, 1, 1))
        self.padding = padding
        self.conv_2d = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        widths = (64, 64, 128, 256, 512)
        for s, n in enumerate(blocks):
            setattr(self, f"layer_{s}", nn.Sequential(*[
                PreActBlock(widths[s] if i == 0 else widths[s + 1], widths[s + 1], (1 if s == 0 else 2) if i == 0
                            else 1, act) for i in range(n)]))
        self.batchnorm, self.relu = nn.BatchNorm2d(512), act()
        self.logits = nn.Linear(512, classes)

    def forward(self, x):
        if self.padding:
            x = F.pad(x, (self.padding,) * 4)
        out = self.conv_2d((x - self.mean) / self.std)
        for s in range(4):
            out = getattr(self, f"layer_{s}")(out)
        out = F.avg_pool2d(self.relu(self.batchnorm(out)), 4)
        return self.logits(out.view(out.size(0), -1))
