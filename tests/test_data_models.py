"""CIFAR models in timm's registry, the shipped data, and reproducible batches."""
import io
import tarfile

import pytest
import timm
import torch
from PIL import Image

import earlybird as eb
from earlybird.data.datasets import Batches, ImageSet, load_dataset, load_packed, pack_images, read_archive
from earlybird.data.models import PRERESNET_DEPTHS, VGG_DEPTHS, preresnet_block
from earlybird.data.models import build_model
from earlybird.training.trainer import lr_at


@pytest.mark.parametrize("name", [f"cifar_vgg{d}_bn" for d in VGG_DEPTHS] +
                         [f"cifar_preresnet{d}" for d in PRERESNET_DEPTHS])
def test_registered_cifar_models_build_through_timm(name):
    model = timm.create_model(name, num_classes=100)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 100)
    gammas = torch.cat([m.weight for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert torch.all(gammas == 0.5)                        # the reference initialisation


def test_model_shapes_follow_the_reference():
    vgg = eb.models.CifarVGG(16)
    convs = [m.out_channels for m in vgg.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    narrow = eb.models.CifarVGG(11, width=0.5)
    assert [m.out_channels for m in narrow.modules() if isinstance(m, torch.nn.Conv2d)] == \
        [32, 64, 128, 128, 256, 256, 256, 256]
    pre = eb.models.PreResNet(101)
    assert len(pre.layer1) == 11 and pre.fc.in_features == 256     # bottleneck, 9n+2
    assert len(eb.models.PreResNet(20).layer1) == 3                 # basic, 6n+2
    assert (preresnet_block(56), preresnet_block(164)) == ("basic", "bottleneck")
    with pytest.raises(ValueError, match="6n\\+2 .* 9n\\+2"):
        eb.models.PreResNet(21)
    with pytest.raises(ValueError, match=r"VGG depth must be one of \[11, 13, 16, 19\]"):
        eb.models.CifarVGG(12)


def test_build_model_turns_off_zero_init_last_and_names_unknown_archs():
    model = build_model("resnet50", None, 10)              # torchvision
    assert model.fc.out_features == 10
    timm_model = build_model("resnet18d", None, 10)
    assert all(bool((m.weight != 0).all()) for m in timm_model.modules()
               if isinstance(m, torch.nn.BatchNorm2d))
    with pytest.raises(ValueError, match=r"unknown arch 'vgg99'; choose from \['vgg', 'preresnet'"):
        build_model("vgg99", None, 10)


def test_lr_schedule():
    assert [lr_at(e, 0.1, [80, 120]) for e in (0, 79, 80, 119, 120, 159)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_shipped_subset_is_class_balanced_and_real():
    sets = load_packed()
    train, test = sets["train"], sets["test"]
    assert train.images.shape == (10000, 3, 32, 32) and test.images.shape == (2000, 3, 32, 32)
    assert torch.bincount(train.labels).tolist() == [1000] * 10
    assert torch.bincount(test.labels).tolist() == [200] * 10
    assert train.classes[:3] == ["airplane", "automobile", "bird"]
    mean = train.images.float().mean((0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor(eb.data.images.CIFAR_MEAN), atol=0.01)


def _jpeg(color):
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_pack_and_read_archive_round_trip(tmp_path):
    tar_path = tmp_path / "tiny.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        for split, n in (("train", 4), ("test", 2)):
            for c, color in (("cat", (200, 10, 10)), ("dog", (10, 10, 200))):
                for i in range(n):
                    blob = _jpeg(color)
                    info = tarfile.TarInfo(f"{split}/{c}/{i:04d}.jpg")
                    info.size = len(blob)
                    tar.addfile(info, io.BytesIO(blob))
    full = read_archive(tar_path)
    assert len(full["train"]) == 8 and full["train"].classes == ["cat", "dog"]
    pack_images(tar_path, tmp_path / "tiny.npz", train_per_class=3, test_per_class=1)
    packed = load_packed(tmp_path / "tiny.npz")
    assert torch.bincount(packed["train"].labels).tolist() == [3, 3]
    assert packed["train"].images[0, 0].float().mean() > 150          # a red cat
    assert packed["train"].images[-1, 2].float().mean() > 150         # a blue dog
    train, test, info = load_dataset("cifar10-subset", str(tmp_path / "tiny.npz"))
    assert len(train) == 6 and len(test) == 2 and info["size"] == 32
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")
    with pytest.raises(FileNotFoundError, match="train/ and val/"):
        load_dataset("imagenet", str(tmp_path))


def test_batches_are_reproducible_and_resume_mid_epoch():
    g = torch.Generator().manual_seed(0)
    data = ImageSet(torch.randint(0, 256, (50, 3, 8, 8), generator=g, dtype=torch.uint8),
                    torch.arange(50), ["x"])
    a, b = Batches(data, 16, True, seed=3), Batches(data, 16, True, seed=3)
    a.set_epoch(2), b.set_epoch(2)
    full = list(a)
    assert len(full) == 4 and sum(len(y) for _, y in full) == 50
    tail = list(b.iterate(2))
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(full[2:], tail))
    b.set_epoch(3)
    assert not torch.equal(next(iter(b))[1], full[0][1])              # a new order each epoch
    assert sorted(torch.cat([y for _, y in full]).tolist()) == list(range(50))


def test_augmentation_is_a_padded_crop_or_its_mirror():
    img = torch.arange(3 * 8 * 8, dtype=torch.uint8).view(1, 3, 8, 8).repeat(64, 1, 1, 1)
    data = ImageSet(img, torch.zeros(64, dtype=torch.long), ["x"])
    batches = Batches(data, 64, True, mean=(0, 0, 0), std=(1 / 255,) * 3, pad=2)
    x, _ = batches.batch(0)
    padded = torch.nn.functional.pad(img[0].float(), (2, 2, 2, 2))
    crops = [padded[:, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
    crops += [c.flip(-1) for c in crops]
    assert all(any(torch.equal(xi, c) for c in crops) for xi in x)
    assert len({tuple(xi.flatten().tolist()) for xi in x}) > 10      # not all the same crop
