"""The generated GitHub Actions workflow and the commands its jobs run.

    layout.py    plan -> CI jobs: groups of cells that share work, sharded into matrices of <= 256 entries
    actions.py   the third-party actions the workflow uses, pinned by commit SHA
    workflow.py  renders ci/github-actions.yml.j2 from a layout
    stage.py     what a Linux job runs: build one group's nodes, export them for the next jobs
    images.py    toolchain images in CI: load a saved tar, pull from a registry, or build (then save/push)
    finish.py    what the macOS job runs: exactly the steps Linux manifests list as `deferred`
    commands.py  the invoke tasks' entry points (one line + exit 2 for user errors)
"""
