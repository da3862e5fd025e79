"""
title: Mail
author: community
version: 0.3.0
description: Send e-mail over SMTP and read the latest messages over IMAP.
"""

import email
import imaplib
import smtplib
from email.message import EmailMessage
from email.utils import parseaddr
from typing import Optional

from pydantic import BaseModel, Field


class Tools:
    class Valves(BaseModel):
        SMTP_HOST: str = Field("smtp.example.com", description="SMTP server")
        SMTP_PORT: int = Field(587, description="SMTP port (587 for STARTTLS, 465 for SSL)")
        IMAP_HOST: str = Field("imap.example.com", description="IMAP server")
        FROM_EMAIL: str = Field("someone@example.com", description="The sender address")
        PASSWORD: str = Field("", description="Mailbox password or app password")
        USE_SSL: bool = False

    def __init__(self):
        self.valves = self.Valves()

    def send_email(
        self,
        to: list[str],
        subject: str,
        body: str,
        cc: Optional[list[str]] = None,
        html: bool = False,
        __user__: dict = {},
    ) -> str:
        """
        Send an e-mail.
        :param to: Recipient addresses.
        :param subject: The subject line.
        :param body: The message body (plain text, or HTML when html is true).
        :param cc: Addresses to copy.
        :param html: Send the body as HTML.
        """
        msg = EmailMessage()
        msg["From"] = self.valves.FROM_EMAIL
        msg["To"] = ", ".join(to)
        if cc:
            msg["Cc"] = ", ".join(cc)
        msg["Subject"] = subject
        msg.set_content(body, subtype="html" if html else "plain")
        smtp_cls = smtplib.SMTP_SSL if self.valves.USE_SSL else smtplib.SMTP
        with smtp_cls(self.valves.SMTP_HOST, self.valves.SMTP_PORT, timeout=30) as server:
            if not self.valves.USE_SSL:
                server.starttls()
            server.login(self.valves.FROM_EMAIL, self.valves.PASSWORD)
            server.send_message(msg)
        return f"Message sent to {', '.join(to)}"

    def read_inbox(self, count: int = 5, unread_only: bool = True, folder: str = "INBOX") -> list[dict]:
        """
        Read the most recent messages.
        :param count: How many messages.
        :param unread_only: Only unread messages.
        :param folder: The mailbox folder.
        """
        with imaplib.IMAP4_SSL(self.valves.IMAP_HOST) as imap:
            imap.login(self.valves.FROM_EMAIL, self.valves.PASSWORD)
            imap.select(folder, readonly=True)
            _, data = imap.search(None, "UNSEEN" if unread_only else "ALL")
            out = []
            for num in data[0].split()[-count:]:
                _, parts = imap.fetch(num, "(RFC822)")
                m = email.message_from_bytes(parts[0][1])
                out.append({"from": parseaddr(m["From"])[1], "subject": m["Subject"], "date": m["Date"]})
            return out
