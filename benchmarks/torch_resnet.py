"""PyTorch models with the tensor names of torchvision's ResNet, RobustBench's (and pytorch-cifar's)
CIFAR ResNet / PreActResNet and RobustBench's WideResNet. The speed baselines (`ResNet18`, the
CIFAR form of hfcjax's ResNet-18) and the references of hfcjax.torch_weights' tests."""

import torch
from torch import nn

F = torch.nn.functional


class Basic(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride, short):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.proj = None
        if stride != 1 or cin != planes:
            setattr(self, short, nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)))
            self.proj = short

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (getattr(self, self.proj)(x) if self.proj else x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride, short):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.proj = None
        if stride != 1 or cin != planes * 4:
            setattr(self, short, nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride, bias=False),
                                               nn.BatchNorm2d(planes * 4)))
            self.proj = short

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        return F.relu(out + (getattr(self, self.proj)(x) if self.proj else x))


class ResNet(nn.Module):
    """torchvision's ResNet (imagenet=True) or the CIFAR form with shortcut/linear names."""

    def __init__(self, block, blocks, imagenet, classes=10):
        super().__init__()
        self.imagenet = imagenet
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False) if imagenet else nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin, short = 64, "downsample" if imagenet else "shortcut"
        for i, n in enumerate(blocks):
            layer = []
            for j in range(n):
                layer.append(block(cin, 64 * 2**i, 2 if i > 0 and j == 0 else 1, short))
                cin = 64 * 2**i * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
        setattr(self, "fc" if imagenet else "linear", nn.Linear(cin, classes))

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        if self.imagenet:
            x = F.max_pool2d(x, 3, 2, 1)
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
        x = x.mean((2, 3))
        return self.fc(x) if self.imagenet else self.linear(x)


class PreActBlock(nn.Module):
    def __init__(self, cin, planes, stride, out_shortcut):
        super().__init__()
        self.out_shortcut = out_shortcut
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        if stride != 1 or cin != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out if self.out_shortcut else x) if hasattr(self, "shortcut") else x
        return self.conv2(F.relu(self.bn2(self.conv1(out)))) + shortcut


class PreActResNet18(nn.Module):
    def __init__(self, bn_before_fc, out_shortcut, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        cin = 64
        for i in range(4):
            planes = 64 * 2**i
            blocks = [PreActBlock(cin, planes, 2 if i > 0 else 1, out_shortcut), PreActBlock(planes, planes, 1,
                                                                                              out_shortcut)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = planes
        self.bn = nn.BatchNorm2d(512) if bn_before_fc else None
        self.linear = nn.Linear(512, classes)

    def forward(self, x):
        x = self.conv1(x)
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
        if self.bn is not None:
            x = F.relu(self.bn(x))
        return self.linear(F.avg_pool2d(x, 4).flatten(1))


class WideBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal = cin == cout
        self.convShortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        if self.equal:
            out = F.relu(self.bn1(x))
        else:
            x = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(out if self.equal else x))))
        return (x if self.equal else self.convShortcut(x)) + out


class NetworkBlock(nn.Module):
    def __init__(self, n, cin, cout, stride):
        super().__init__()
        self.layer = nn.Sequential(*[WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                     for i in range(n)])

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth=28, widen=10, classes=10):
        super().__init__()
        n, ch = (depth - 4) // 6, [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, ch[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.fc = nn.Linear(ch[3], classes)

    def forward(self, x):
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(F.relu(self.bn1(x)).mean((2, 3)))


def ResNet18(num_classes=10):
    """hfcjax's ResNet-18 in CIFAR form (3x3 stem, stride 1, no max-pool, BatchNorm)."""
    return ResNet(Basic, (2, 2, 2, 2), imagenet=False, classes=num_classes)


def device():
    return "cuda" if torch.cuda.is_available() else "cpu"
