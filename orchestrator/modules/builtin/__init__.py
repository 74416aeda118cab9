"""The analysis modules that ship with the orchestrator.

:class:`~orchestrator.modules.registry.ModuleRegistry` instantiates each class in
:data:`BUILTIN_MODULES` with no arguments.
"""

from __future__ import annotations

from orchestrator.modules.base import BaseModule
from orchestrator.modules.builtin.dependencies import DependenciesModule
from orchestrator.modules.builtin.inventory import InventoryModule
from orchestrator.modules.builtin.python_syntax import PythonSyntaxModule
from orchestrator.modules.builtin.secrets_scan import SecretsModule
from orchestrator.modules.builtin.todos import TodosModule

__all__ = [
    "BUILTIN_MODULES",
    "DependenciesModule",
    "InventoryModule",
    "PythonSyntaxModule",
    "SecretsModule",
    "TodosModule",
]

BUILTIN_MODULES: tuple[type[BaseModule], ...] = (
    InventoryModule,
    PythonSyntaxModule,
    SecretsModule,
    DependenciesModule,
    TodosModule,
)
