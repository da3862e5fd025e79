"""
title: Nested Models
author: executor tests
version: 0.1.0
"""

from typing import Literal, Optional

from pydantic import BaseModel, Field


class Address(BaseModel):
    """A postal address."""

    street: str
    city: str = Field(..., description="City name")
    zip_code: Optional[str] = None
    country: str = "NL"


class Person(BaseModel):
    name: str = Field(description="Full name", min_length=1)
    age: int = Field(0, ge=0, le=150)
    address: Address
    other_addresses: list[Address] = []
    kind: Literal["customer", "vendor"] = "customer"


class TreeNode(BaseModel):
    """A recursive node."""

    label: str
    children: list["TreeNode"] = []


class Order(BaseModel):
    id: int
    buyer: Person
    shipping: Optional[Address] = None
    items: dict[str, int] = Field(default_factory=dict, description="sku to quantity")


class Tools:
    def add_person(self, person: Person, notify: bool = False) -> str:
        """
        Store a person.
        :param person: the person to store
        :param notify: send a notification
        """
        return person.name

    def place_order(self, order: Order, alternatives: Optional[list[Address]] = None) -> str:
        """
        Place an order with nested models two levels deep.
        :param order: the order
        """
        return str(order.id)

    def tree(self, root: TreeNode) -> int:
        """Walk a recursive tree."""
        return len(root.children)

    def pick(self, where: Address | Person) -> str:
        """A union of models."""
        return "ok"
