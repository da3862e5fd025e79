"""
title: Calculator
author: community
version: 0.2.0
description: Evaluate arithmetic safely (no eval), with a few math functions.
"""

import ast
import math
import operator

_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}
_FUNCS = {"sqrt": math.sqrt, "sin": math.sin, "cos": math.cos, "log": math.log, "abs": abs, "round": round}


def _eval(node):
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.left), _eval(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS:
        return _FUNCS[node.func.id](*[_eval(a) for a in node.args])
    if isinstance(node, ast.Name) and node.id in ("pi", "e"):
        return getattr(math, node.id)
    raise ValueError(f"unsupported expression: {ast.dump(node)}")


class Tools:
    def __init__(self):
        pass

    def calculator(self, equation: str) -> str:
        """
        Calculate the result of an equation.
        :param equation: The equation to calculate.
        """
        try:
            result = _eval(ast.parse(equation, mode="eval"))
            return f"{equation} = {result}"
        except Exception as e:
            print(e)
            return "Invalid equation"

    def percentage(self, value: float, percent: float) -> float:
        """
        What is `percent` percent of `value`.
        :param value: the base value
        :param percent: the percentage, e.g. 15 for 15%
        """
        return value * percent / 100

    def statistics(self, numbers: list[float]) -> dict:
        """
        Mean, median, min and max of a list of numbers.
        :param numbers: the numbers
        """
        ordered = sorted(numbers)
        n = len(ordered)
        mid = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
        return {"mean": sum(ordered) / n, "median": mid, "min": ordered[0], "max": ordered[-1]}
