"""labctl: a Kubernetes HA lab out of local virtual machines."""

from setuptools import find_packages, setup

# The data directories live at the top level of the repository (images/, cloud-init/, network/)
# and are installed inside the package as labctl.data.*, so an installed labctl finds them anywhere.
DATA = {
    "labctl.data.images": "images",
    "labctl.data.cloud_init": "cloud-init",
    "labctl.data.network": "network",
}

setup(
    name="labctl",
    version="0.1.0",
    description="Build a real Kubernetes HA lab out of local virtual machines (libvirt, VirtualBox)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=[*find_packages(include=["labctl", "labctl.*"]), *DATA],
    package_dir=DATA,
    package_data={"labctl": ["lab.yaml"], **{name: ["*", "**/*"] for name in DATA}},
    exclude_package_data={name: ["__pycache__", "*.pyc"] for name in DATA},
    install_requires=[
        "libvirt-python>=9.0",
        "pycdlib>=1.14",
        "requests>=2.28",
        "click>=8.1",
        "pyyaml>=6.0",
        "cryptography>=41",
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6", "pytest-benchmark>=4"],
        "lint": ["ruff>=0.5", "mypy>=1.8", "types-PyYAML", "types-requests", "import-linter>=2.0"],
    },
    entry_points={"console_scripts": ["labctl = labctl.cli.main:main"]},
)
