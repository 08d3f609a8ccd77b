from setuptools import find_packages, setup

setup(
    name="b2bua",
    version="0.1.0",
    description="Edge SIP back-to-back user agent with ICE, built on pjsua2 "
    "workers behind a Kamailio edge",
    packages=find_packages(include=["b2bua", "b2bua.*"]),
    package_data={"b2bua": ["edge/*.cfg.tmpl", "data/*"]},
    python_requires=">=3.11",
    install_requires=[
        "pjsua2-python==2.15.1.post1",
        "pyyaml>=6",
        "click>=8",
    ],
    extras_require={"test": ["pytest>=7"]},
    entry_points={"console_scripts": ["b2bua=b2bua.cli:main"]},
)
